"""Walk the latent space of a VAE between two test digits and save the strip as a PNG.

Shows ``VAE.interpolate``: both images are encoded to their posterior means, the path
between them is decoded, spherically (``slerp``, the default, which keeps a typical norm
under the Gaussian prior) and linearly. The PNG has one row per method; each row is
``[start digit, decoded path..., end digit]`` (the path begins and ends with the
reconstructions of the two digits).

The VAE comes from, in this order: ``--checkpoint DIR`` (any VAE run or model folder);
``--steps N`` (train ``--model`` for N steps first, with the shared trainer); else the
weights shipped for ``--model``.

Run from the repository root (MNIST under ``$GENMNIST_DATA`` or ``--data-dir``)::

    python examples/latent_interpolation.py                          # shipped vae-mlp
    python examples/latent_interpolation.py --checkpoint runs/mnist/vae-conv --digits 4 9
    python examples/latent_interpolation.py --steps 1000 --out runs/interpolation

``--steps 5`` finishes in seconds (the strip is then blurry).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import genmnist
from genmnist.data import load_dataset
from genmnist.models.vae import VAE
from genmnist.training import Trainer, TrainOptions
from genmnist.viz import save_grid


def get_vae(args: argparse.Namespace) -> VAE:
    if args.checkpoint is not None:
        model = genmnist.load(args.checkpoint)
    elif args.steps is not None:
        model = genmnist.create_model(args.model)
        options = TrainOptions(
            out=args.out / "run",
            max_steps=args.steps,
            data_dir=args.data_dir,
            progress=sys.stderr.isatty(),
        )
        Trainer(model, options).fit()
    else:
        model = genmnist.load(args.model)
    if not isinstance(model, VAE):
        raise genmnist.GenmnistError(f"'{model.name}' is not a VAE: it has no latent space")
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vae-mlp", help="VAE name (default: vae-mlp)")
    parser.add_argument("--checkpoint", type=Path, help="load this VAE folder instead")
    parser.add_argument("--steps", type=int, help="train --model for this many steps first")
    parser.add_argument("--digits", type=int, nargs=2, default=(3, 8), metavar=("A", "B"))
    parser.add_argument("--num", type=int, default=10, help="images on the path (>= 2)")
    parser.add_argument("--data-dir", help="data root (default: $GENMNIST_DATA or the cache)")
    parser.add_argument("--out", type=Path, default=Path("runs/interpolation"))
    args = parser.parse_args(argv)

    try:
        model = get_vae(args)
        test = load_dataset("mnist", "test", args.data_dir)
    except genmnist.GenmnistError as exc:
        sys.exit(f"error: {exc}")

    # The first test image of each requested digit.
    a, b = (int((test.labels == d).nonzero()[0]) for d in args.digits)
    images, labels = test.batch(torch.tensor([a, b]))
    # A conditional VAE decodes the whole path with one label: the start digit's.
    label = labels[:1] if model.conditional else None

    rows = []
    for method in ("slerp", "linear"):
        path = model.interpolate(images[0], images[1], steps=args.num, labels=label, method=method)
        rows.append(torch.cat([images[:1], path, images[1:]]))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"interpolation-{args.digits[0]}-{args.digits[1]}.png"
    out = save_grid(torch.cat(rows), args.out / name, nrow=args.num + 2)
    print(
        f"{model.name}: test images #{a} ({args.digits[0]}) -> #{b} ({args.digits[1]}), "
        f"rows slerp and linear, saved to {out}"
    )


if __name__ == "__main__":
    main()
