"""Figures of the docs that are drawn from the shipped weights.

    python recipes/figures.py

Writes ``docs/models/vae-priors.png``: 64 samples of the shipped ``vae-gmm`` decoded from
the standard normal prior it was trained against (left) and from the Gaussian-mixture
prior fitted to its training codes (right), same decoder, seed 0.
"""

from __future__ import annotations

from pathlib import Path

import torch

import genmnist
from genmnist.nn.priors import StandardNormal
from genmnist.viz import make_grid, to_uint8

REPO = Path(__file__).resolve().parents[1]


def vae_priors(out: Path) -> Path:
    from PIL import Image

    model = genmnist.load("vae-gmm")
    mixture = model.sample(64, seed=0, temperature=1.0)
    model.prior = StandardNormal(model.config.latent_dim)
    standard = model.sample(64, seed=0, temperature=1.0)
    left, right = make_grid(standard, 8), make_grid(mixture, 8)
    gap = torch.ones(left.shape[0], left.shape[1], 12)
    grid = torch.cat([left, gap, right], dim=2)
    pixels = to_uint8(grid.unsqueeze(0))[0].permute(1, 2, 0).squeeze(-1).numpy()
    image = Image.fromarray(pixels).resize((pixels.shape[1] * 2, pixels.shape[0] * 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def main() -> None:
    print(vae_priors(REPO / "docs" / "models" / "vae-priors.png"))


if __name__ == "__main__":
    main()
