"""Copy a finished run's weights into the package as shipped, half-precision weights.

    python recipes/export.py runs/mnist/cvae --dataset mnist

Writes src/genmnist/pretrained/<dataset>/<model>/{config.json,model.safetensors} in
float16 (``--fp32`` keeps float32, as the diffusion models need) and prints how far the
shipped copy's samples are from the run's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import genmnist

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "genmnist" / "pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by genmnist train")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="store float32 (diffusion: its sampling ODE amplifies float16 rounding)",
    )
    args = parser.parse_args()

    model = genmnist.load(args.run)
    target = PACKAGE_ROOT / args.dataset / model.name
    model.save_pretrained(target, dtype=torch.float32 if args.fp32 else torch.float16)
    shipped = genmnist.load(target)
    a, b = model.sample(64, seed=0), shipped.sample(64, seed=0)
    worst = (a - b).abs().max().item() * 255
    storage = "float32" if args.fp32 else "float16"
    print(f"{target}: largest pixel change from {storage} storage {worst:.2f}/255")


if __name__ == "__main__":
    main()
