"""Sample a trained model and save a grid of samples per label.

Shows ``genmnist.load`` (shipped weights by model name, or any checkpoint folder) and
``genmnist.viz.save_grid``. For a class-conditional model such as ``cvae`` it writes one
grid per label (``label-0.png`` ... ``label-9.png``) and an overview ``all.png`` with one
row per label; for an unconditional model it writes ``all.png`` only.

Run from the repository root::

    python examples/sample_pretrained.py                      # shipped cvae weights
    python examples/sample_pretrained.py --model vae-conv --out samples/vae-conv
    python examples/sample_pretrained.py --checkpoint runs/mnist/cvae   # your own run

No data is needed: sampling only reads the weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import genmnist
from genmnist.viz import save_grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cvae", help="shipped model to load (default: cvae)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="load this folder (config.json + model.safetensors) instead; overrides --model",
    )
    parser.add_argument("--dataset", default="mnist", help="shipped weights of which dataset")
    parser.add_argument("--per-label", type=int, default=8, help="samples per label (row)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--out", type=Path, default=Path("samples/pretrained"), help="folder")
    args = parser.parse_args(argv)

    try:
        model = genmnist.load(args.checkpoint or args.model, dataset=args.dataset)
    except genmnist.GenmnistError as exc:
        sys.exit(f"error: {exc}")
    source = args.checkpoint or f"shipped {args.dataset} weights"
    print(f"Loaded {model.name} ({model.num_parameters():,} parameters) from {source}")

    args.out.mkdir(parents=True, exist_ok=True)
    k = args.per_label
    if model.conditional:
        rows = []
        for label in range(model.config.num_classes):
            # The same seed for every label: column j shares its latent noise across rows,
            # so each column shows one "style" rendered as every digit.
            images = model.sample(k, labels=label, seed=args.seed)
            save_grid(images, args.out / f"label-{label}.png", nrow=k)
            rows.append(images)
        overview = torch.cat(rows)
    else:
        overview = model.sample(10 * k, seed=args.seed)
    path = save_grid(overview, args.out / "all.png", nrow=k)
    print(f"Saved {len(overview)} samples to {path}")


if __name__ == "__main__":
    main()
