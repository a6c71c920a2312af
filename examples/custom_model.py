"""Build a custom model from genmnist's components, train, save, reload and sample it.

Shows the whole model API on a new :class:`~genmnist.models.base.GenerativeModel`
subclass, ``SplitVAE``: a VAE whose encoder and decoder are any entries of
``genmnist.nn.ENCODERS`` / ``genmnist.nn.DECODERS`` with *their own* widths (here a
convolutional encoder and an MLP decoder). The steps:

1. a config dataclass (a ``ModelConfig`` subclass: the trainer reads batch size,
   learning rate... from it, and it is saved as ``config.json``);
2. the model: layers built from the config, ``generate`` and ``training_loss``;
3. registering it in ``genmnist.registry.MODELS`` so that ``create_model`` and
   ``genmnist.load`` know the name;
4. training with the shared ``genmnist.training.Trainer`` on real MNIST;
5. ``save_pretrained``, ``genmnist.load(folder)`` and sampling.

If one width list for both halves is enough, no subclass is needed: the built-in
``genmnist.models.vae.VAE(encoder="conv", decoder="mlp", hidden_dims=(32, 64),
latent_dim=16)`` is the same idea with shared ``hidden_dims``. To make a model usable from
the ``genmnist`` command line in any process, ship it as a plugin (see
``examples/plugin-example``); registering it in a script, as here, lasts for that process.

Run from the repository root (MNIST under ``$GENMNIST_DATA`` or ``--data-dir``)::

    python examples/custom_model.py --steps 500 --out runs/split-vae-example

Writes ``OUT/run/`` (the trainer's run folder), ``OUT/model/`` (``save_pretrained``) and
``OUT/samples.png``. ``--steps 5`` finishes in seconds (the samples are then noise).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import genmnist
from genmnist.losses import bce_reconstruction, gaussian_kl
from genmnist.models.base import GenerativeModel, ModelConfig, SampleNoise
from genmnist.nn import DECODERS, ENCODERS
from genmnist.registry import MODELS
from genmnist.training import Trainer, TrainOptions
from genmnist.viz import save_grid


# 1. The config: recipe fields come from ModelConfig; add the architecture's own.
@dataclass
class SplitVAEConfig(ModelConfig):
    """Architecture of a :class:`SplitVAE`."""

    encoder: str = "conv"
    encoder_dims: tuple[int, ...] = (32, 64)
    decoder: str = "mlp"
    decoder_dims: tuple[int, ...] = (256, 512)
    latent_dim: int = 16
    epochs: int = 2


# 2. The model.
class SplitVAE(GenerativeModel):
    """VAE with independently sized encoder and decoder from the component registries."""

    config_class = SplitVAEConfig
    default_name = "split-vae"
    config: SplitVAEConfig

    def __init__(self, config: SplitVAEConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.encoder = ENCODERS.create(
            cfg.encoder, out_features=2 * cfg.latent_dim, hidden_dims=tuple(cfg.encoder_dims)
        )
        self.decoder = DECODERS.create(
            cfg.decoder, in_features=cfg.latent_dim, hidden_dims=tuple(cfg.decoder_dims)
        )

    def generate(self, noise: SampleNoise, labels: torch.Tensor | None) -> torch.Tensor:
        # All randomness comes from `noise`, so seeded samples are reproducible.
        z = noise.randn(self.config.latent_dim)
        return torch.sigmoid(self.decoder(z))

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, phase: str = "model"
    ) -> dict[str, torch.Tensor]:
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        reconstruction = bce_reconstruction(self.decoder(z), images)
        kl = gaussian_kl(mean, logvar)
        return {"loss": reconstruction + kl, "reconstruction": reconstruction.detach()}


# 3. Register it (guarded, so importing this module twice does not fail).
if "split-vae" not in MODELS:
    MODELS.register("split-vae", SplitVAE, description="conv encoder, MLP decoder (example)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--data-dir", help="data root (default: $GENMNIST_DATA or the cache)")
    parser.add_argument("--out", type=Path, default=Path("runs/split-vae-example"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = genmnist.create_model("split-vae", latent_dim=args.latent_dim)

    # 4. Train with the shared trainer (it writes OUT/run/config.json, model.safetensors,
    #    a resumable checkpoint, metrics.jsonl and loss.png).
    options = TrainOptions(
        out=args.out / "run",
        max_steps=args.steps,
        data_dir=args.data_dir,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    try:
        result = Trainer(model, options).fit()
    except genmnist.GenmnistError as exc:  # e.g. no data, or OUT/run already holds a run
        sys.exit(f"error: {exc}")
    print(f"trained {result.step} steps, last metrics: {result.last_metrics}")

    # 5. Save, reload by folder (the registry maps config.json's "model" to SplitVAE), sample.
    folder = model.save_pretrained(args.out / "model")
    reloaded = genmnist.load(folder)
    images = reloaded.sample(64, seed=args.seed)
    assert torch.equal(images, model.sample(64, seed=args.seed)), "reload changed the model"
    path = save_grid(images, args.out / "samples.png", nrow=8)
    print(f"saved {folder} and {path}")


if __name__ == "__main__":
    main()
