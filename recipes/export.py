"""Copy a finished run's weights into the package, with the training half of its card.

    python recipes/export.py runs/mnist/cvae --dataset mnist

Writes src/genmnist/pretrained/<dataset>/<model>/{config.json,model.safetensors} in
float16 (``--fp32`` keeps float32) and ``card.json`` with how the run was trained (recipe,
command, seed, steps, time), and copies the run's training log (``metrics.jsonl``, thinned
to a few hundred records) beside them, from which ``genmnist compare`` draws the shipped
model's training curve.
Prints how far the shipped copy's samples are from the run's.
The evaluation half of the card comes from ``python recipes/cards.py``.

``--guide RUN`` combines the run with a short run of the same U-Net as its autoguidance
guide (`genmnist.models.Autoguided`, saved as the sub-folders ``model/`` and ``guide/``);
its training record goes on the card too:

    python recipes/export.py runs/fashion-mnist/ddpm --dataset fashion-mnist --fp32 \
        --guide runs/fashion-mnist/ddpm-guide

``--out FOLDER`` writes the (guided) model to a folder instead of the package, without a
card: that is how `recipes/train.sh` builds the teacher of a guidance distillation run.
A distillation run (its checkpoint records a training task: guidance distillation,
reflow) is exported with ``--teacher RUN`` naming its teacher's main run (and
``--guide RUN`` its guide, if it had one), whose training records go on the card beside
the distillation's own:

    python recipes/export.py runs/mnist/ddpm-distill --fp32 --teacher runs/mnist/ddpm \
        --set sampling_steps=6 'spacing="trailing"'
    python recipes/export.py runs/fashion-mnist/ddpm-distill --dataset fashion-mnist --fp32 \
        --teacher runs/fashion-mnist/ddpm --guide runs/fashion-mnist/ddpm-guide
    python recipes/export.py runs/mnist/reflow --teacher runs/mnist/flow

A fine-tuning run (a `genmnist.finetuning` task, recipe ``<model>.tune.json``, run folder
``runs/<dataset>/<model>-tune``) is exported the same way, ``--teacher`` naming the main
run it continued; its record goes on the card under ``fine_tuning``:

    python recipes/export.py runs/fashion-mnist/cvae-tune --dataset fashion-mnist --fp32 \
        --teacher runs/fashion-mnist/cvae

A teacher folder without a checkpoint (a shipped model copied out of the package before
its student replaces it) gives the training record on its own card. A run trained with
an objective (a `genmnist.objectives` task, in the model's own recipe) continued nothing
and is exported like any run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
from pathlib import Path

import torch

import genmnist
from genmnist.metrics.stability import training_time
from genmnist.models import Autoguided, saved_config
from genmnist.run_folder import (
    METRICS_FILE,
    holds_model,
    read_header,
    read_metrics,
    read_task_record,
)
from genmnist.training import TRAINING_TASKS

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO / "src" / "genmnist" / "pretrained"
#: Records of a shipped training log: enough for its curves, small enough for the wheel
#: (a 120-epoch GAN logs over 2,000).
SHIPPED_LOG_RECORDS = 300


def training_record(
    run: Path, dataset: str, name: str, recipe: Path | None, out: str | None = None
) -> dict:
    """What the run folder says about its training (``out``: the run folder the command
    names, default ``runs/<dataset>/<name>``)."""
    records = read_metrics(run)
    header = read_header(run)
    if header is None:
        raise SystemExit(f"{run}: no readable training checkpoint")
    last = records[-1]
    speeds = sorted(r["images_per_second"] for r in records if "images_per_second" in r)
    command = f"genmnist train {name} --dataset {dataset} --out {out or f'runs/{dataset}/{name}'}"
    if recipe is not None:
        command += f" --config {recipe.relative_to(REPO)}"
    return {
        "command": command,
        "recipe": None if recipe is None else json.loads(recipe.read_text()),
        "seed": header.get("seed"),
        "steps": last.get("step"),
        "epochs": round(float(last.get("epoch", 0.0)), 2),
        "seconds": round(training_time(records) or 0.0, 1),
        "median_images_per_second": round(speeds[len(speeds) // 2], 1) if speeds else None,
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, "
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
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=JSON",
        help="change config fields that do not touch the weights, e.g. the default "
        "sampler settings chosen after measuring: sampling_steps=10 'spacing=\"log-snr\"'",
    )
    parser.add_argument(
        "--guide",
        type=Path,
        help="run folder of the autoguidance guide (a short run of the same U-Net); its "
        "recipe is recipes/<dataset>/<model>.guide.json",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        help="main run of a distilled model's teacher (see --guide), or the run that a "
        "fine-tuned model continued",
    )
    parser.add_argument("--out", type=Path, help="write the model to this folder instead (no card)")
    args = parser.parse_args()

    model = genmnist.load(args.run)
    task = (read_task_record(args.run) or {}).get("name", "data")
    # distillation, reflow, fine-tuning: the run continued another; an objective
    # (genmnist.objectives) trains from scratch, its recipe the model's own
    distilled = task != "data" and not continues_nothing(task)
    if distilled != (args.teacher is not None):
        parser.error("--teacher names the teacher's run of a distilled model, and only that")
    teacher_name = saved_config(args.teacher)[0] if distilled else model.name
    if args.set:
        changes = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        model.config = model.config.replace(**changes)
    if args.guide is not None and not distilled:
        guide = genmnist.load(args.guide)
        model = Autoguided(model=model, guide=guide, guidance_scale=model.config.guidance_scale)
    if args.out is not None:
        model.save_pretrained(args.out)
        print(f"{args.out}: {model.name} written (float32)")
        return
    target = PACKAGE_ROOT / args.dataset / model.name
    before = _weights(target)
    storage = "float32" if args.fp32 else "float16"
    stored = model
    if isinstance(model, Autoguided):
        # float16 halves the guide's share of the package (which would pass 25 MB in
        # float32). Like any weight change it gives different, not worse, samples under the
        # deterministic sampler, so the card must be measured on the stored weights. A
        # copy, so that the comparison below measures the change against the run.
        stored = copy.deepcopy(model)
        stored.guide.half()
        storage += " (guide float16)"
    stored.save_pretrained(target, dtype=None if args.fp32 else torch.float16)
    after = _weights(target)
    log = args.run / METRICS_FILE  # lets `genmnist compare` draw its curves
    if log.is_file() and not isinstance(model, Autoguided):
        kept = thinned_log(read_metrics(log))
        (target / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))
    same_weights = (
        before is not None
        and before.keys() == after.keys()
        and all(torch.equal(before[k], after[k]) for k in after)
    )
    shipped = genmnist.load(target)
    a, b = model.sample(64, seed=0), shipped.sample(64, seed=0)
    worst = (a - b).abs().max().item() * 255
    print(f"{target}: largest pixel change from {storage} storage {worst:.2f}/255")

    recipes = REPO / "recipes" / args.dataset
    recipe = args.recipe or recipes / f"{teacher_name}.json"
    # a guidance-distilled student shares its teacher's name (recipes/<name>.distill.json,
    # runs/<name>-distill), as a fine-tuned model does (<name>.tune.json, <name>-tune);
    # a student of another name (reflow) has a recipe of its own
    tuned = distilled and TRAINING_TASKS.get(task).__module__.startswith("genmnist.finetuning")
    key, suffix = ("fine_tuning", "tune") if tuned else ("distillation", "distill")
    card_path = target / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card.update(
        format="genmnist-card",
        version=1,
        model=model.name,
        dataset=args.dataset,
        weights={"dtype": storage, "parameters": model.num_parameters()},
        training=shipped_training_record(args.teacher, replaced=key)
        if distilled and read_header(args.teacher) is None
        else training_record(
            args.teacher if distilled else args.run,
            args.dataset,
            teacher_name,
            recipe.resolve() if recipe.is_file() else None,
        ),
    )
    if distilled:
        same_name = teacher_name == model.name
        distill_recipe = recipes / (
            f"{model.name}.{suffix}.json" if same_name else f"{model.name}.json"
        )
        card["training"][key] = training_record(
            args.run,
            args.dataset,
            model.name,
            distill_recipe if distill_recipe.is_file() else None,
            out=f"runs/{args.dataset}/{model.name}" + (f"-{suffix}" if same_name else ""),
        )
    if args.guide is not None:
        guide_recipe = REPO / "recipes" / args.dataset / f"{model.name}.guide.json"
        guide = training_record(
            args.guide,
            args.dataset,
            model.name,
            guide_recipe if guide_recipe.is_file() else None,
            out=f"runs/{args.dataset}/{model.name}-guide",
        )
        guide["command"] += f" --max-steps {guide['steps']}"  # a fraction of an epoch
        card["training"]["guide"] = guide
    card.pop("evaluation", None)  # measured with the old defaults or weights
    if not same_weights:  # sweeps name their sampling options, so only weights matter
        card.pop("sweeps", None)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"{card_path}: training record written; run recipes/cards.py to evaluate")


def shipped_training_record(folder: Path, replaced: str) -> dict:
    """The training record on the card of a shipped model copied to ``folder`` (a teacher
    whose run folder is gone, its weights being the shipped ones): every step that made
    those weights (a distilled teacher keeps its distillation record), except the record
    under ``replaced``, which the run that continued it writes."""
    card = folder / "card.json"
    record = json.loads(card.read_text()).get("training") if card.is_file() else None
    if not isinstance(record, dict):
        raise SystemExit(f"{folder}: no training checkpoint, and no card with a training record")
    return {k: v for k, v in record.items() if k != replaced}


def continues_nothing(task: str) -> bool:
    """Whether the training task ``task`` trains a model from scratch (an objective beside
    the model's own loss) rather than continuing another model's run."""
    return TRAINING_TASKS.get(task).__module__.startswith("genmnist.objectives")


def thinned_log(records: list[dict], most: int = SHIPPED_LOG_RECORDS) -> list[dict]:
    """At most about ``most`` evenly spaced records of a training log, always keeping the
    last and first records around each resume, so that the curves keep their shape and
    `training_time` (which sums the segments' clocks) is unchanged."""
    if len(records) <= most:
        return list(records)
    stride = math.ceil(len(records) / most)
    keep = set(range(0, len(records), stride)) | {len(records) - 1}
    for i in range(len(records) - 1):
        now, after = records[i].get("time"), records[i + 1].get("time")
        if isinstance(now, int | float) and isinstance(after, int | float) and after < now:
            keep |= {i, i + 1}  # a resume: the clock restarts
    return [records[i] for i in sorted(keep)]


def _weights(folder: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of the model in ``folder`` (a composite's parts included), or None."""
    if not holds_model(folder):
        return None
    return {k: v.detach().clone() for k, v in genmnist.load(folder).state_dict().items()}


if __name__ == "__main__":
    main()
