"""Fill the shipped models' cards with measured numbers and render the docs page.

    # 1. measure every shipped model (the comparison page is this report)
    genmnist compare vae-mlp vae-conv vae-gmm cvae gan-mlp dcgan cgan gan-sc ddpm ddpm-cfg \
        -n 10000 -o docs/comparison/mnist --overwrite
    python recipes/cards.py metrics docs/comparison/mnist/metrics.json
    # 2. sampling trade-offs of the diffusion models (smaller n: FID is biased upwards)
    python recipes/cards.py sweep ddpm --steps 4 5 6 8 10 -n 2000 --set spacing=trailing
    python recipes/cards.py sweep ddpm-cfg --guidance 1 1.5 2 3 4 -n 2000
    # the distilled ddpm: its teacher over the scale it learned, and its own first-step
    # guidance against the null label that null-label tuning gave it back
    python recipes/cards.py sweep ddpm --checkpoint runs/mnist/ddpm \
        --guidance 1 1.5 2 2.5 3 -n 2000 --set steps=6 spacing=trailing
    python recipes/cards.py sweep ddpm --guidance 0 0.4 0.5 0.6 0.7 1 -n 2000
    python recipes/cards.py sweep cvae --temperature 0.5 0.6 0.7 0.8 1 -n 2000
    # 3. the docs page (after `python recipes/figures.py`, which draws its sample grids)
    python recipes/cards.py docs

The training half of a card is written by ``recipes/export.py``. Everything here goes
through `genmnist.metrics.evaluate` with seed 0, so ``genmnist eval NAME`` reproduces it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO / "src" / "genmnist" / "pretrained"
DOCS_PAGE = REPO / "docs" / "pretrained.md"
#: Card order on the docs page: by family, simple to elaborate.
ORDER = [
    "vae-mlp", "vae-conv", "vae-gmm", "cvae", "gan-mlp", "dcgan", "cgan", "gan-sc", "ddpm",
    "ddpm-cfg", "flow", "flow-cfg", "reflow",
]  # fmt: skip
DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
#: Metrics a card shows, in order: key, label, format.
CARD_METRICS = [
    ("fid", "FID", ".2f"),
    ("kid", "KID", ".4f"),
    ("precision", "precision", ".3f"),
    ("recall", "recall", ".3f"),
    ("acceptability", "acceptability (confidence >= 0.9)", ".1%"),
    ("inception_score", "classifier IS", ".2f"),
    ("coverage", "class coverage", ".2f"),
    ("rarest_class_share", "rarest class share", ".1%"),
    ("conditional_accuracy", "conditional accuracy", ".1%"),
    ("elbo", "test ELBO (nats / image)", ".1f"),
    ("images_per_second", "sampling images / s (CPU, batch 1000)", ",.0f"),
]


#: What a sweep measures at each setting (fidelity and diversity), in the card's order.
SWEEP_METRICS = (
    "fid", "acceptability", "conditional_accuracy", "precision", "recall", "network_calls",
    "sampling_seconds",
)  # fmt: skip

#: Sampling options a sweep can vary, with the type of their values.
SWEEPABLE = {
    "steps": int,
    "guidance": float,
    "temperature": float,
    "time_shift": float,
    "sampler": str,
}


def card_path(dataset: str, name: str) -> Path:
    return PACKAGE_ROOT / dataset / name / "card.json"


def read_card(dataset: str, name: str) -> dict[str, Any]:
    path = card_path(dataset, name)
    if not path.is_file():
        raise SystemExit(f"{path}: no card; export the run first (recipes/export.py)")
    return json.loads(path.read_text())


def write_card(card: dict[str, Any]) -> None:
    path = card_path(card["dataset"], card["model"])
    path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")


def eval_command(name: str, dataset: str, n: int, extra: str = "") -> str:
    command = f"genmnist eval {name} -n {n}"
    if dataset != "mnist":
        command += f" --dataset {dataset}"
    return command + extra


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.5g}")
    return value


def cmd_metrics(args: argparse.Namespace) -> None:
    results = json.loads(Path(args.report).read_text())
    for result in results.values():
        name, dataset = result["model"], result["dataset"]
        card = read_card(dataset, name)
        keep = {k: rounded(v) for k, v in result.items() if not isinstance(v, list | dict)}
        card["evaluation"] = {
            "command": eval_command(name, dataset, result["n"]),
            "metrics": keep,
        }
        write_card(card)


def json_or_text(value: str) -> Any:
    """A ``--set`` value: JSON where it parses (``10``, ``2.5``), else the text itself."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@contextmanager
def counting_network_calls(model: Any) -> Iterator[dict[str, int]]:
    """Count the images that pass through the model's U-Nets (teacher, guide and student
    alike) while the block runs: ``{"images": ...}``. Divided by the number of samples it
    is the network calls per image, guidance's doubled batches included."""
    from genmnist.nn.unet import UNet

    seen = {"images": 0}

    def count(module, inputs, output) -> None:
        seen["images"] += inputs[0].shape[0]

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, UNet)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def cmd_sweep(args: argparse.Namespace) -> None:
    import genmnist
    from genmnist.metrics import evaluate

    read_card(args.dataset, args.name)  # fail before measuring if there is no card
    # --checkpoint: measure another model for this card, such as a distilled model's
    # teacher over the guidance scale the student learned
    model = genmnist.load(args.checkpoint or args.name, dataset=args.dataset)
    option, kind = next((o, k) for o, k in SWEEPABLE.items() if getattr(args, o))
    values = [kind(v) for v in getattr(args, option)]
    fixed = {k: json_or_text(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = []
    for value in values:
        with counting_network_calls(model) as seen:
            result = evaluate(
                model, args.dataset, args.n, floor=False, sample_options={**fixed, option: value}
            )
        if seen["images"]:
            result["network_calls"] = seen["images"] / args.n
        row = {option: value}
        for key in SWEEP_METRICS:
            if result.get(key) is not None:
                row[key] = rounded(result[key])
        rows.append(row)
        print(json.dumps(row), flush=True)
    flag = option.replace("_", "-")
    extra = "".join(f" --{k.replace('_', '-')} {v}" for k, v in fixed.items())
    extra += f" --{flag} VALUE"
    if args.checkpoint:
        extra = f" --checkpoint {args.checkpoint}" + extra
    card = read_card(args.dataset, args.name)  # again: other steps may have written it

    def key(sweep: dict) -> tuple:
        return sweep["option"], sweep["fixed"], sweep.get("checkpoint")

    mine = (option, fixed, args.checkpoint)
    same = [s for s in card.get("sweeps", []) if key(s) == mine]
    if same and same[0]["n"] == args.n:  # add to the earlier measurements of this sweep
        measured = {row[option]: row for row in same[0]["rows"]}
        measured.update({row[option]: row for row in rows})
        rows = [measured[v] for v in sorted(measured)]
    sweeps = [s for s in card.get("sweeps", []) if key(s) != mine]
    sweeps.append(
        {
            "option": option,
            "fixed": fixed,
            **({"checkpoint": args.checkpoint} if args.checkpoint else {}),
            "n": args.n,
            "command": eval_command(args.name, args.dataset, args.n, extra),
            "rows": rows,
        }
    )
    card["sweeps"] = sweeps
    write_card(card)


def cmd_docs(args: argparse.Namespace) -> None:
    DOCS_PAGE.write_text(render_docs())
    print(f"wrote {DOCS_PAGE.relative_to(REPO)}")


def render_docs() -> str:
    """The model-card page, from every shipped card.json."""
    from genmnist.models import create_model

    lines = [
        "# Pretrained models (model cards)",
        "",
        "<!-- Generated by `python recipes/cards.py docs` from the shipped card.json files;",
        "edit those (or rerun the measurements), not this page. -->",
        "",
        "The models below ship weights inside the package, so `genmnist sample NAME`",
        "works offline right after `pip install .` (or a wheel). Each card shows samples",
        "of the shipped weights (seed 0; a conditional model's columns are the labels 0",
        "to 9), says how they were trained (the recipe reproduces them) and what",
        "`genmnist eval` measured for them with 10,000 samples, beside the same metric",
        "for real test images (the",
        "*real data* column: 10,000 training images scored against the test set). See",
        "[Evaluation](evaluation.md) for what each metric means and",
        "[the comparison report](comparison/mnist/report.md) for all models side by side.",
        "`genmnist info NAME` prints the same card in the terminal.",
        "",
        *without_weights(),
        "To reproduce a model: `bash recipes/train.sh mnist NAME` (it resumes an",
        "interrupted run), `python recipes/export.py runs/mnist/NAME` (add `--fp32` for the",
        "diffusion models; `ddpm` is exported from `runs/mnist/ddpm-tune` with",
        "`--teacher runs/mnist/ddpm-distill`, the student distilled from",
        "`runs/mnist/ddpm`) to copy the",
        "weights into the package, then measure as described at the top of",
        "`recipes/cards.py`. Numbers were measured on a 2-core x86_64 CPU",
        "without a GPU, usually while other jobs shared it, so training times are upper",
        "bounds.",
        "",
    ]
    for dataset, title in DATASET_TITLES.items():
        cards = sorted(
            (json.loads(p.read_text()) for p in (PACKAGE_ROOT / dataset).glob("*/card.json")),
            key=lambda c: (ORDER.index(c["model"]) if c["model"] in ORDER else 99, c["model"]),
        )
        if not cards:
            continue
        lines += [f"## {title}", ""]
        for card in cards:
            lines += render_card(card, create_model(card["model"]))
    return "\n".join(lines).rstrip() + "\n"


def sample_image(dataset: str, name: str) -> str:
    """The link, relative to the docs page, of the model's sample grid, which
    ``recipes/figures.py`` draws for every shipped model."""
    return f"images/samples/{dataset}/{name}.png"


def without_weights() -> list[str]:
    """A sentence naming the built-in models that ship no weights, if any."""
    from genmnist.models import DATASETS, pretrained_dir
    from genmnist.registry import BUILTIN_SOURCE, MODELS

    names = [
        entry.name
        for entry in MODELS
        if entry.source == BUILTIN_SOURCE
        and all(pretrained_dir(entry.name, d) is None for d in DATASETS)
    ]
    if not names:
        return []
    listed = ", ".join(f"`{n}`" for n in names)
    return [
        f"No weights ship for {listed}: [Training](training.md) and the model family",
        "pages say how to make them.",
        "",
    ]


def _sweep_format(key: str) -> str:
    """How a sweep table shows a metric: shares as percentages, call counts as counted."""
    if key.endswith("accuracy") or key == "acceptability":
        return ".1%"
    return "g" if key == "network_calls" else ".2f"


def render_card(card: dict[str, Any], model: Any) -> list[str]:
    name, dataset = card["model"], card["dataset"]
    flag = "" if dataset == "mnist" else f" --dataset {dataset}"
    training = card.get("training") or {}
    weights = card.get("weights") or {}
    out = [f"### `{name}`" + ("" if dataset == "mnist" else f" ({DATASET_TITLES[dataset]})"), ""]
    from genmnist.registry import MODELS

    out.append(MODELS.entry(name).summary + ".")
    out.append("")
    label = " --label 7" if model.conditional else ""
    out += [f"![samples of {name} on {dataset}]({sample_image(dataset, name)})", ""]
    out.append(f"- **Sample**: `genmnist sample {name}{flag}{label} -n 64 -o samples.png`")
    out.append(
        f"- **Architecture**: `{type(model).__name__}`, {weights.get('parameters', 0):,} "
        f"parameters, shipped in {weights.get('dtype')}; full config in "
        f"`genmnist info {name}`."
    )
    if training:
        minutes = training.get("seconds", 0) / 60
        out.append(f"- **Recipe**: `{training['command']}` (seed {training.get('seed')})")
        if training.get("recipe"):
            out.append(f"  with `{json.dumps(training['recipe'])}`")
        out.append(
            f"- **Training**: {training.get('steps', 0):,} steps, {training.get('epochs')} "
            f"epochs, {minutes:.0f} min on {training.get('machine')}"
            + (f" ({training['note']})" if training.get("note") else "")
        )
    task = ((training.get("distillation") or {}).get("recipe") or {}).get("task") or {}
    if task.get("name") == "reflow":
        distillation = (
            "Reflow",
            ". The teacher is the run above; the student learned the "
            "straight paths between noise and the teacher's samples",
        )
    else:
        distillation = (
            "Guidance distillation",
            ". The teacher is the run above"
            + (" with its guide" if "guide" in training else "")
            + "; the student samples with one U-Net call per step instead of two",
        )
    stages = (
        ("guide", "Autoguidance guide", ", attached with "
         "`python recipes/export.py RUN --guide GUIDE_RUN`"),
        ("distillation", *distillation),
        ("fine_tuning", "Fine-tuning", ". It continued the run above with the training "
         "task its recipe names"),
    )  # fmt: skip
    for key, title, remark in stages:
        stage = training.get(key)
        if stage:
            out.append(
                f"- **{title}**: `{stage['command']}` (seed {stage.get('seed')})"
                + (f" with `{json.dumps(stage['recipe'])}`" if stage.get("recipe") else "")
                + f": {stage.get('steps', 0):,} steps, {stage.get('seconds', 0) / 60:.0f} min"
                + remark
            )
    evaluation = card.get("evaluation")
    if evaluation:
        metrics = evaluation["metrics"]
        out += ["", f"Measured with `{evaluation['command']}`:", ""]
        out += ["| metric | this model | real data |", "|---|---|---|"]
        for key, label, fmt in CARD_METRICS:
            if metrics.get(key) is None:
                continue
            floor = metrics.get(f"{key}_floor")
            shown = format(floor, fmt) if floor is not None else ""
            out.append(f"| {label} | {format(metrics[key], fmt)} | {shown} |")
    for sweep in card.get("sweeps", []):
        option = sweep["option"]
        keys = [k for k in SWEEP_METRICS if any(k in row for row in sweep["rows"])]
        of = f" of `{sweep['checkpoint']}`" if sweep.get("checkpoint") else ""
        out += [
            "",
            f"Trade-off over `--{option.replace('_', '-')}`{of} (n = {sweep['n']:,}, so FID "
            f"reads higher than at 10,000; times from a shared CPU; `{sweep['command']}`):",
            "",
        ]
        titles = {
            "fid": "FID",
            "acceptability": "acceptability",
            "conditional_accuracy": "conditional accuracy",
            "precision": "precision",
            "recall": "recall",
            "network_calls": "U-Net calls per image",
            "sampling_seconds": f"seconds for {sweep['n']:,} samples",
        }
        out.append(f"| {option} | " + " | ".join(titles[k] for k in keys) + " |")
        out.append("|---" * (len(keys) + 1) + "|")
        for row in sweep["rows"]:
            cells = ["" if k not in row else format(row[k], _sweep_format(k)) for k in keys]
            out.append(f"| {row[option]} | " + " | ".join(cells) + " |")
    if card.get("notes"):
        out += ["", card["notes"]]
    out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    metrics = sub.add_parser("metrics", help="copy a compare report's metrics into the cards")
    metrics.add_argument("report", help="metrics.json written by genmnist compare")
    metrics.set_defaults(run=cmd_metrics)
    sweep = sub.add_parser("sweep", help="measure one model over steps or guidance")
    sweep.add_argument("name")
    sweep.add_argument("--dataset", default="mnist")
    sweep.add_argument("--checkpoint", help="measure this model folder instead (e.g. a teacher)")
    sweep.add_argument("-n", type=int, default=2000)
    sweep.add_argument(
        "--set", nargs="*", default=[], help="fixed sampling options, e.g. spacing=log-snr"
    )
    group = sweep.add_mutually_exclusive_group(required=True)
    for option in SWEEPABLE:
        group.add_argument(f"--{option.replace('_', '-')}", nargs="+")
    sweep.set_defaults(run=cmd_sweep)
    docs = sub.add_parser("docs", help="render docs/pretrained.md")
    docs.set_defaults(run=cmd_docs)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
