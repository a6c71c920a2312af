"""Copy a finished run's weights into the package, with the training half of its card.

    python recipes/export.py runs/mnist/cvae --dataset mnist

Writes src/genmnist/pretrained/<dataset>/<model>/{config.json,model.safetensors} in
float16 (``--fp32`` keeps float32) and ``card.json`` with how the run was trained (recipe,
command, seed, steps, time). Prints how far the shipped copy's samples are from the run's.
The evaluation half of the card comes from ``python recipes/cards.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import genmnist
from genmnist.io import load_tensors
from genmnist.metrics.stability import read_metrics, training_time

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO / "src" / "genmnist" / "pretrained"


def training_record(run: Path, dataset: str, name: str, recipe: Path | None) -> dict:
    """What the run folder says about its training."""
    records = read_metrics(run / "metrics.jsonl")
    _, meta = load_tensors(run / "checkpoint.safetensors")
    state = json.loads(meta["genmnist"]).get("state", {})
    last = records[-1]
    speeds = sorted(r["images_per_second"] for r in records if "images_per_second" in r)
    command = f"genmnist train {name} --dataset {dataset} --out runs/{dataset}/{name}"
    if recipe is not None:
        command += f" --config {recipe.relative_to(REPO)}"
    return {
        "command": command,
        "recipe": None if recipe is None else json.loads(recipe.read_text()),
        "seed": state.get("seed"),
        "steps": last.get("step"),
        "epochs": round(float(last.get("epoch", 0.0)), 2),
        "seconds": round(training_time(records) or 0.0, 1),
        "median_images_per_second": round(speeds[len(speeds) // 2], 1) if speeds else None,
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__.split('+')[0]}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by genmnist train")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--fp32", action="store_true", help="store float32 weights")
    parser.add_argument(
        "--recipe", type=Path, help="recipe JSON (default: recipes/<dataset>/<model>.json)"
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

    recipe = args.recipe or REPO / "recipes" / args.dataset / f"{model.name}.json"
    card_path = target / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card.update(
        format="genmnist-card",
        version=1,
        model=model.name,
        dataset=args.dataset,
        weights={"dtype": storage, "parameters": model.num_parameters()},
        training=training_record(
            args.run, args.dataset, model.name, recipe.resolve() if recipe.is_file() else None
        ),
    )
    card.pop("evaluation", None)  # new weights: the old numbers no longer apply
    card.pop("sweeps", None)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"{card_path}: training record written; run recipes/cards.py to evaluate")


if __name__ == "__main__":
    main()
