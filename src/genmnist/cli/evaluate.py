"""The evaluation commands: ``eval``, ``compare`` and ``train-evaluator``.

Like the other commands they import torch only when they run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from genmnist.cli.common import (
    DEFAULT_DATASET,
    CheckpointOption,
    DataDirOption,
    DatasetOption,
    GuidanceIntervalOption,
    GuidanceOption,
    ModelDatasetOption,
    OverwriteOption,
    SamplerOption,
    SpacingOption,
    StepsOption,
    TemperatureOption,
    TimeShiftOption,
    UsageProblem,
    check_dataset,
    check_output_file,
    check_sampling,
    console,
    err_console,
    model_folder,
    os_reason,
    progress_bar,
    resolve_model,
    sampling_options,
    sampling_usage,
)
from genmnist.errors import GenmnistError

NumOption = Annotated[
    int,
    typer.Option(
        "-n", "--num", min=10, help="Samples to draw (fewer than 10,000 warn: FID is biased)."
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed of sampling, the floor subset and KID.")]
BatchOption = Annotated[int, typer.Option(min=1, help="Images generated at once.")]


def _evaluate(model, run_dir, dataset, n, data_dir, seed, batch_size, floor, options, say):
    from genmnist.metrics import evaluate

    with warnings.catch_warnings(), progress_bar(n, f"sampling {model.name}") as update:
        warnings.simplefilter("ignore")  # evaluate() reports them in result["warnings"]
        return evaluate(
            model,
            dataset,
            n,
            data_dir=data_dir,
            seed=seed,
            batch_size=batch_size,
            floor=floor,
            run_dir=run_dir,
            sample_options=options,
            log=say,
            progress=update,
        )


def _print_result(result: dict[str, Any]) -> None:
    from rich.table import Table

    from genmnist.metrics.evaluation import METRICS
    from genmnist.metrics.report import format_value

    table = Table(
        "metric",
        "value",
        "real floor",
        "better",
        title=f"{result['model']} on {result['dataset']}, n = {result['n']:,}",
    )
    group = None
    for key, info in METRICS.items():
        if result.get(key) is None:
            continue
        if group is not None and info.group != group:
            table.add_section()
        group = info.group
        floor = format_value(key, result.get(f"{key}_floor")) if info.floor else ""
        table.add_row(info.label, format_value(key, result[key]), floor, info.better or "")
    out = console()
    out.print(table)
    hist = " ".join(f"{i}:{h:.3f}" for i, h in enumerate(result.get("class_histogram", [])))
    out.print(f"class histogram: {hist}")
    if result.get("mode_collapse"):
        out.print("[red]mode collapse[/]: some class gets under a quarter of its fair share")
    if isinstance(result.get("evaluator_accuracy"), float):
        out.print(f"evaluator test accuracy: {result['evaluator_accuracy']:.2%}")


def eval_command(
    name: Annotated[str, typer.Argument(help="Registered model name, or a checkpoint folder.")],
    checkpoint: CheckpointOption = None,
    n: NumOption = 10000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON to this file.")
    ] = None,
    dataset: ModelDatasetOption = None,
    data_dir: DataDirOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 1000,
    floor: Annotated[bool, typer.Option(help="Compute the real-data floor.")] = True,
    sampler: SamplerOption = None,
    steps: StepsOption = None,
    spacing: SpacingOption = None,
    time_shift: TimeShiftOption = None,
    guidance: GuidanceOption = None,
    guidance_interval: GuidanceIntervalOption = None,
    temperature: TemperatureOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Evaluate a model: FID/KID/precision/recall with their real-data floor, IS,
    acceptability, class coverage, VAE and efficiency metrics."""
    check_dataset(dataset)
    if output is not None:
        check_output_file(output, "--output", overwrite)
    err = err_console()
    resolved = resolve_model(name, checkpoint, dataset)
    model, run_dir, dataset = resolved.model, resolved.folder, resolved.dataset
    options = sampling_options(
        model,
        sampler=sampler,
        steps=steps,
        spacing=spacing,
        time_shift=time_shift,
        guidance=guidance,
        guidance_interval=guidance_interval,
        temperature=temperature,
    )
    check_sampling(model, options, seed)
    with sampling_usage(options):
        result = _evaluate(
            model,
            run_dir,
            dataset,
            n,
            data_dir,
            seed,
            batch_size,
            floor,
            options,
            lambda message: err.print(f"[dim]{message}[/]"),
        )
    _report(result, output, as_json)


def score_command(
    images: Annotated[
        Path,
        typer.Argument(
            help="Images made anywhere: an .npy array, an .npz or .safetensors file with "
            "'images' (and 'labels'), or a folder of 28x28 PNG images."
        ),
    ],
    labels: Annotated[
        Path | None,
        typer.Option(help="The classes the images were drawn for (.npy of integers)."),
    ] = None,
    dataset: DatasetOption = DEFAULT_DATASET,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON to this file.")
    ] = None,
    data_dir: DataDirOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the floor subset and KID.")] = 0,
    floor: Annotated[bool, typer.Option(help="Compute the real-data floor.")] = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Score images from any generator with the same metrics as eval: FID/KID/precision/
    recall with their real-data floor, IS, acceptability, class coverage."""
    check_dataset(dataset)
    if output is not None:
        check_output_file(output, "--output", overwrite)
    from genmnist.metrics.evaluation import evaluate_images
    from genmnist.metrics.image_files import read_images

    pictures, given_labels = read_images(images, labels)
    err = err_console()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported from result["warnings"] below
        result = evaluate_images(
            pictures,
            dataset,
            labels=given_labels,
            name=images.name or str(images),
            data_dir=data_dir,
            seed=seed,
            floor=floor,
            log=lambda message: err.print(f"[dim]{message}[/]"),
        )
    _report(result, output, as_json)


def _report(result: dict[str, Any], output: Path | None, as_json: bool) -> None:
    """Print an evaluation result (warnings to stderr), writing its JSON to ``output``."""
    for message in result.get("warnings", []):
        err_console().print(f"[yellow]warning[/]: {message}")
    if output is not None:
        from genmnist.io import write_json

        write_json(output, result)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _print_result(result)
        if output is not None:
            console().print(f"JSON written to {output}")


def compare_command(
    models: Annotated[
        list[str],
        typer.Argument(help="Models: registered names (shipped weights) or checkpoint folders."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("report"),
    n: NumOption = 10000,
    dataset: ModelDatasetOption = None,
    data_dir: DataDirOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 1000,
    charts: Annotated[
        bool, typer.Option(help="Draw the charts (needs matplotlib: genmnist[plot]).")
    ] = True,
    results_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--results",
            help="JSON from `genmnist eval -o` to reuse instead of evaluating again (used "
            "only for the same weights, dataset, n and seed; repeatable).",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace the report that the folder already holds."),
    ] = False,
) -> None:
    """Evaluate several models and write a Markdown report with metrics, samples and charts."""
    check_dataset(dataset)
    from genmnist.metrics.report import REPORT_FILE

    if os.path.lexists(out) and not out.is_dir():  # else found only after the evaluations
        raise UsageProblem(f"--out: {out} is not a folder; give a folder for the report")
    if (out / REPORT_FILE).exists() and not overwrite:
        raise UsageProblem(f"--out: {out} already holds a report; pass --overwrite to replace it")
    earlier = _read_results(results_files or [])
    if charts:
        from genmnist.metrics.report import require_matplotlib

        require_matplotlib()
    from genmnist import run_folder
    from genmnist.metrics.report import unique_labels, write_report
    from genmnist.metrics.stability import loss_key, read_metrics
    from genmnist.models import pretrained_dir

    err = err_console()
    loaded, dataset = _resolve_compared(models, dataset)
    labels = unique_labels(_labels(loaded))
    results, samples, curves = [], [], {}
    for label, (model, folder, _) in zip(labels, loaded, strict=True):
        result = _reusable(earlier, model, dataset, n, seed)
        if result is not None:
            err.print(f"[dim]{label}: reusing {result.pop('_file')}[/]")
        else:
            result = _evaluate(
                model,
                folder,
                dataset,
                n,
                data_dir,
                seed,
                batch_size,
                True,
                None,
                lambda message: err.print(f"[dim]{message}[/]"),
            )
        results.append(result)
        count = 100 if model.conditional else 64
        samples.append(model.sample(min(count, n), seed=seed, batch_size=batch_size))
        # shipped weights come with their run's training log where it was kept
        log_folder = folder if folder is not None else pretrained_dir(model.name, dataset)
        if log_folder is not None and run_folder.holds_metrics(log_folder):
            records = read_metrics(log_folder)
            key = loss_key(records)
            curves[label] = [
                (float(r["step"]), float(r[key]))
                for r in records
                if key is not None and isinstance(r.get(key), int | float) and math.isfinite(r[key])
            ]
    for message in sorted({m for r in results for m in r.get("warnings", [])}):
        err.print(f"[yellow]warning[/]: {message}")
    try:
        path = write_report(
            out, labels, results, samples, curves, [src for _, _, src in loaded], charts=charts
        )
    except OSError as exc:
        raise GenmnistError(f"cannot write the report: {os_reason(exc)}") from None
    _print_summary(labels, results)
    console().print(f"Report written to {path}")


def _read_results(files: list[Path]) -> list[dict[str, Any]]:
    """The `genmnist eval -o` JSON files given to ``compare --results``."""
    from genmnist.io import read_json

    results = []
    for file in files:
        result = read_json(file)
        if not isinstance(result, dict) or not isinstance(result.get("weights_sha256"), str):
            raise UsageProblem(
                f"--results: {file} is not the JSON of `genmnist eval -o` (of this version)"
            )
        if problem := _result_problem(result):
            raise UsageProblem(f"--results: {file}: {problem}")
        results.append({**result, "_file": str(file)})
    return results


#: The fields of `genmnist eval -o` JSON that are not numbers, and what they must be.
_RESULT_FIELDS: dict[str, tuple[str, Any]] = {
    "model": ("a string", lambda v: isinstance(v, str)),
    "dataset": ("a string", lambda v: isinstance(v, str)),
    "weights_sha256": ("a string", lambda v: isinstance(v, str)),
    "loss_key": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "n": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "seed": ("an integer", lambda v: _is_int(v)),
    "conditional": ("true or false", lambda v: isinstance(v, bool)),
    "mode_collapse": ("true or false", lambda v: isinstance(v, bool)),
    "class_histogram": (
        "a list of numbers",
        lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
    ),
    "warnings": (
        "a list of strings",
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    ),  # fmt: skip
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _result_problem(result: dict[str, Any]) -> str | None:
    """What is wrong with the fields of an eval result read back from a file, if anything
    (every field the report uses has the type `genmnist eval` writes)."""
    for key in ("model", "dataset", "n", "seed"):
        if key not in result:
            return f"field '{key}' is missing"
    for key, value in result.items():
        what, fits = _RESULT_FIELDS.get(
            key, ("a finite number or null", lambda v: v is None or _is_number(v))
        )
        if not fits(value):
            return f"field '{key}' must be {what}, got {json.dumps(value)[:40]}"
    return None


def _resolve_compared(specs: list[str], dataset: str | None):
    """The compared models as ``(model, folder, source)``, and the one dataset they are
    compared on: ``dataset``, else the one their run folders were trained on, else
    `DEFAULT_DATASET`.

    Raises:
        UsageProblem: no ``--dataset`` and run folders trained on different datasets.
    """
    if dataset is None:
        from genmnist.run_folder import run_dataset

        folders = [f for spec in specs if (f := model_folder(spec, None)) is not None]
        trained_on = sorted({d for f in folders if (d := run_dataset(f)) is not None})
        if len(trained_on) > 1:
            raise UsageProblem(
                f"the run folders were trained on {' and '.join(trained_on)}; "
                "choose the dataset to compare them on with --dataset"
            )
        dataset = trained_on[0] if trained_on else DEFAULT_DATASET
    return [tuple(resolve_model(spec, None, dataset)) for spec in specs], dataset


def _reusable(earlier, model, dataset: str, n: int, seed: int) -> dict[str, Any] | None:
    """An earlier result measured on these very weights with the same settings, if any."""
    from genmnist.metrics.efficiency import weights_fingerprint

    if not earlier:
        return None
    fingerprint = weights_fingerprint(model)
    for result in earlier:
        same = (result.get("weights_sha256"), result.get("dataset"), result.get("n"))
        if same == (fingerprint, dataset, n) and result.get("seed") == seed:
            return dict(result)
    return None


def _labels(loaded) -> list[str]:
    """Short names for the report: the model name, plus where it came from when needed."""
    from collections import Counter

    short = [
        model.name if folder is None or folder.name == model.name
        else f"{model.name} ({folder.name})"
        for model, folder, _ in loaded
    ]  # fmt: skip
    counts = Counter(short)
    return [
        label if counts[label] == 1
        else f"{model.name} (shipped)" if folder is None
        else f"{model.name} ({folder.parent.name}/{folder.name})"
        for label, (model, folder, _) in zip(short, loaded, strict=True)
    ]  # fmt: skip


def _print_summary(labels: list[str], results: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from genmnist.metrics.report import format_value

    keys = ["fid", "kid", "precision", "recall", "acceptability", "coverage", "images_per_second"]
    table = Table("model", *keys)
    for label, result in zip(labels, results, strict=True):
        table.add_row(label, *(format_value(k, result.get(k)) for k in keys))
    first = results[0]
    table.add_row("real floor", *(format_value(k, first.get(f"{k}_floor")) for k in keys))
    console().print(table)


def train_evaluator_command(
    dataset: DatasetOption = "mnist",
    data_dir: DataDirOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: the shipped one).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs (default: the shipped recipe).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    init: Annotated[
        Path | None,
        typer.Option(help="Start from this evaluator folder (only the outlier-exposure phase)."),
    ] = None,
) -> None:
    """Retrain the evaluator classifier of a dataset (reproducible for a seed)."""
    check_dataset(dataset)
    from genmnist.metrics.classifier import main

    argv = ["--dataset", dataset, "--seed", str(seed)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if out is not None:
        argv += ["--out", str(out)]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if init is not None:
        argv += ["--init", str(init)]
    main(argv)
