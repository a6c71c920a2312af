"""``genmnist list`` and ``genmnist info``: what is registered, and one model in detail."""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Annotated

import typer

from genmnist.cli.common import (
    DEFAULT_DATASET,
    ModelDatasetOption,
    check_dataset,
    console,
    default_config,
    model_entry,
    resolve_model,
)


def list_models(
    pattern: Annotated[str, typer.Argument(help="Shell-style wildcard, e.g. 'vae*'.")] = "*",
) -> None:
    """List registered models (built-in and plugins)."""
    from rich.table import Table

    from genmnist.data import DATASETS
    from genmnist.models import pretrained_dir
    from genmnist.registry import MODELS

    table = Table("model", "conditional", "pretrained", "source", "description")
    with warnings.catch_warnings():  # plugin problems are listed below the table instead
        warnings.simplefilter("ignore", RuntimeWarning)
        names = MODELS.list(pattern)
    broken = {}
    for name in names:
        entry = MODELS.entry(name)
        try:  # a plugin's class can fail in any way here; list the others regardless
            conditional = default_config(entry).get("num_classes", 0) > 0
            shipped = [d for d in DATASETS if pretrained_dir(name, d) is not None]
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            broken[name] = f"{entry.source}: model '{name}' is unusable: {reason}"
            continue
        table.add_row(
            name,
            "yes" if conditional else "no",
            ", ".join(shipped) or "-",
            entry.source,
            entry.summary,
        )
    out = console()
    out.print(table)
    for name, problem in {**MODELS.problems(), **broken}.items():
        if fnmatch.fnmatchcase(name, pattern):
            out.print(f"[yellow]warning[/]: {problem}")


def info(
    name: Annotated[str, typer.Argument(help="Registered model name, or a checkpoint folder.")],
    dataset: ModelDatasetOption = None,
) -> None:
    """Show a model: the shipped weights for --dataset (their config, size and card), or
    the registered defaults when none ship, or a checkpoint folder's model."""
    from rich.table import Table

    from genmnist.data import DATASETS
    from genmnist.models import model_card, pretrained_dir

    check_dataset(dataset)
    from genmnist.registry import MODELS

    shipped = None
    if name in MODELS:
        model_entry(name)  # a broken plugin is a usage error here
        shipped = pretrained_dir(name, dataset or DEFAULT_DATASET)
    resolved = resolve_model(name, None, dataset, weights=shipped is not None)
    model, dataset = resolved.model, resolved.dataset
    entry = model_entry(model.name)
    out = console()
    out.print(f"[bold]{model.name}[/] - {entry.summary}")
    if resolved.folder is not None:
        out.print(f"folder: {resolved.folder}")
    elif shipped is not None:
        out.print(f"shown: the weights shipped for {dataset}")
    else:
        out.print(f"shown: the registered defaults (no weights ship for {dataset})")
    out.print(f"class: {type(model).__module__}.{type(model).__qualname__}")
    out.print(f"source: {entry.source}")
    out.print(f"parameters: {model.num_parameters():,}")
    classes = f"yes, {model.config.num_classes} classes" if model.conditional else "no"
    out.print(f"conditional: {classes}")
    for each in DATASETS:
        folder = pretrained_dir(model.name, each)
        out.print(f"pretrained ({each}): {folder if folder else 'none'}")
        card = model_card(model.name, each) if folder else None
        if card:
            out.print(card_summary(card), highlight=False)
    if resolved.folder is not None:
        title, column = f"config of {resolved.folder}", "value"
    elif shipped is not None:
        title, column = f"config of the shipped {dataset} weights", "value"
    else:
        title, column = "config (override with genmnist train --config FILE)", "default"
    table = Table("config field", column, title=title)
    for key, value in model.config.to_dict().items():
        table.add_row(key, repr(value))
    out.print(table)


def card_summary(card: dict) -> str:
    """A few lines of a model card: training and the measured metrics beside the floor.

    A field of the wrong type (a damaged card) shows as ``?`` instead of failing."""
    lines = []
    training = _object(card.get("training"))
    if training:
        minutes = _number(training.get("seconds"), 0) / 60
        lines.append(
            f"  trained: {_shown(training.get('steps'), ',')} steps "
            f"({_text(training.get('epochs'))} epochs) in {minutes:.0f} min on "
            f"{_text(training.get('machine', 'CPU'))}"
        )
        lines.append(f"  recipe: {_text(training.get('command'))}")
        task = _object(_object(training.get("recipe")).get("task"))
        if task:  # an objective beside the model's own loss, trained from scratch
            options = ", ".join(f"{k} {_text(v)}" for k, v in task.items() if k != "name")
            lines.append(
                f"  training task: {_text(task.get('name'))}" + (f" ({options})" * bool(options))
            )
        for key, title in (
            ("guide", "autoguidance guide"),
            ("distillation", "distillation"),
            ("fine_tuning", "fine-tuning"),
        ):
            stage = _object(training.get(key))
            if stage:
                lines.append(
                    f"  {title}: {_shown(stage.get('steps'), ',')} steps, "
                    f"{_number(stage.get('seconds'), 0) / 60:.0f} min: "
                    f"{_text(stage.get('command'))}"
                )
    evaluation = _object(card.get("evaluation"))
    metrics = _object(evaluation.get("metrics"))
    shown = []
    for key, label, fmt in (
        ("fid", "FID", ".2f"),
        ("acceptability", "acceptability", ".1%"),
        ("precision", "precision", ".3f"),
        ("recall", "recall", ".3f"),
        ("conditional_accuracy", "conditional accuracy", ".1%"),
    ):
        if metrics.get(key) is not None:
            text = f"{label} {_shown(metrics[key], fmt)}"
            if metrics.get(f"{key}_floor") is not None:
                text += f" (real data {_shown(metrics[f'{key}_floor'], fmt)})"
            shown.append(text)
    if shown:
        lines.append(f"  measured (n={_shown(metrics.get('n'), ',')}): " + ", ".join(shown))
        lines.append(f"  reproduce: {_text(evaluation.get('command'))}")
    return "\n".join(lines)


def _object(value) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value) if math.isfinite(value) else default


def _shown(value, fmt: str) -> str:
    """A number formatted with ``fmt``; ``?`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "?"
    return format(value, fmt)


def _text(value) -> str:
    """A card's text field in one line (``?`` for a non-string)."""
    if value is None:
        return "?"
    text = value if isinstance(value, str | int | float) else "?"
    return " ".join(str(text).split())[:300]
