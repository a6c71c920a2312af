"""The ``genmnist`` command line: list, info, train and sample models.

Torch is imported inside the commands, so ``genmnist --help`` answers at once. Errors a
user can cause print one line (``error: ...``) and exit non-zero: 2 for bad usage, 1 for
runtime failures, 130 for an interrupted run. Set ``GENMNIST_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from genmnist.errors import GenmnistError

app = typer.Typer(
    name="genmnist",
    help="Generative models for MNIST-sized images: train, sample and inspect them.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DatasetOption = Annotated[
    str, typer.Option("--dataset", "-d", help="mnist or fashion-mnist.", show_default=True)
]
# Diffusion sampling options, shared by `sample` and `eval` (other models refuse them).
SamplerOption = Annotated[
    str | None, typer.Option(help="Diffusion sampler: ddim, dpmpp-2m, ddpm, euler, heun.")
]
StepsOption = Annotated[int | None, typer.Option(min=1, help="Diffusion sampling steps.")]
SpacingOption = Annotated[
    str | None, typer.Option(help="Diffusion step spacing: uniform, trailing or log-snr.")
]
GuidanceOption = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        help="Guidance scale: classifier-free (conditional models; self-guided ones, toward "
        "their own clusters) or autoguidance (models with a guide network); 1 turns it off. "
        "Distilled models have it built in.",
    ),
]
TemperatureOption = Annotated[
    float | None,
    typer.Option(help="VAE prior temperature: below 1 gives cleaner, less diverse samples."),
]


class UsageProblem(GenmnistError):
    """A bad argument or combination of arguments (exit code 2, like click's usage errors)."""

    exit_code = 2


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _check_dataset(dataset: str) -> str:
    from genmnist.data import DATASETS

    if dataset not in DATASETS:
        raise UsageProblem(f"unknown dataset '{dataset}'; choose from {', '.join(DATASETS)}")
    return dataset


def _model_entry(name: str):
    from genmnist.errors import RegistryError
    from genmnist.registry import MODELS

    try:
        return MODELS.entry(name)
    except RegistryError as exc:
        raise UsageProblem(str(exc)) from None


def _default_config(entry) -> dict:
    return entry.obj.config_class().replace(**entry.defaults).to_dict()


@app.command("list")
def list_models(
    pattern: Annotated[str, typer.Argument(help="Shell-style wildcard, e.g. 'vae*'.")] = "*",
) -> None:
    """List registered models (built-in and plugins)."""
    from rich.table import Table

    from genmnist.models import DATASETS, pretrained_dir
    from genmnist.registry import MODELS

    table = Table("model", "conditional", "pretrained", "source", "description")
    with warnings.catch_warnings():  # plugin problems are listed below the table instead
        warnings.simplefilter("ignore", RuntimeWarning)
        names = MODELS.list(pattern)
    broken = {}
    for name in names:
        entry = MODELS.entry(name)
        try:  # a plugin's class can fail in any way here; list the others regardless
            conditional = _default_config(entry).get("num_classes", 0) > 0
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
    console = _console()
    console.print(table)
    for name, problem in {**MODELS.problems(), **broken}.items():
        if _matches(name, pattern):
            console.print(f"[yellow]warning[/]: {problem}")


def _matches(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


@app.command()
def info(name: Annotated[str, typer.Argument(help="Registered model name.")]) -> None:
    """Show a model's description, default config, size and shipped weights."""
    from rich.table import Table

    from genmnist.models import DATASETS, create_model, model_card, pretrained_dir

    entry = _model_entry(name)
    model = create_model(name)
    console = _console()
    console.print(f"[bold]{name}[/] - {entry.summary}")
    console.print(f"class: {type(model).__module__}.{type(model).__qualname__}")
    console.print(f"source: {entry.source}")
    console.print(f"parameters: {model.num_parameters():,}")
    classes = f"yes, {model.config.num_classes} classes" if model.conditional else "no"
    console.print(f"conditional: {classes}")
    for dataset in DATASETS:
        folder = pretrained_dir(name, dataset)
        console.print(f"pretrained ({dataset}): {folder if folder else 'none'}")
        card = model_card(name, dataset) if folder else None
        if card:
            console.print(_card_summary(card), highlight=False)
    table = Table(
        "config field", "default", title="config (override with genmnist train --config FILE)"
    )
    for key, value in model.config.to_dict().items():
        table.add_row(key, repr(value))
    console.print(table)


def _card_summary(card: dict) -> str:
    """A few lines of a model card: training and the measured metrics beside the floor."""
    lines = []
    training = card.get("training") or {}
    if training:
        minutes = (training.get("seconds") or 0) / 60
        lines.append(
            f"  trained: {training.get('steps', '?'):,} steps ({training.get('epochs')} epochs) "
            f"in {minutes:.0f} min on {training.get('machine', 'CPU')}"
        )
        lines.append(f"  recipe: {training.get('command')}")
        for key, title in (("guide", "autoguidance guide"), ("distillation", "distillation")):
            stage = training.get(key) or {}
            if stage:
                lines.append(
                    f"  {title}: {stage.get('steps', '?'):,} steps, "
                    f"{(stage.get('seconds') or 0) / 60:.0f} min: {stage.get('command')}"
                )
    evaluation = card.get("evaluation") or {}
    metrics = evaluation.get("metrics") or {}
    shown = []
    for key, label, fmt in (
        ("fid", "FID", ".2f"),
        ("acceptability", "acceptability", ".1%"),
        ("precision", "precision", ".3f"),
        ("recall", "recall", ".3f"),
        ("conditional_accuracy", "conditional accuracy", ".1%"),
    ):
        if metrics.get(key) is not None:
            text = f"{label} {format(metrics[key], fmt)}"
            if metrics.get(f"{key}_floor") is not None:
                text += f" (real data {format(metrics[f'{key}_floor'], fmt)})"
            shown.append(text)
    if shown:
        lines.append(f"  measured (n={metrics.get('n', '?'):,}): " + ", ".join(shown))
        lines.append(f"  reproduce: {evaluation.get('command')}")
    return "\n".join(lines)


@app.command()
def train(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    epochs: Annotated[int | None, typer.Option(min=1, help="Passes over the data.")] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many optimizer steps.")
    ] = None,
    dataset: DatasetOption = "mnist",
    data_dir: Annotated[
        Path | None, typer.Option(help="Data root (default: $GENMNIST_DATA or ~/.cache).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON file of config fields to override.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 42,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 200,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: auto).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    nproc: Annotated[
        int | None,
        typer.Option(min=1, help="Train data-parallel in N processes here (starts torchrun)."),
    ] = None,
) -> None:
    """Train a model: writes config.json, model.safetensors, checkpoints, metrics, loss plot."""
    _check_dataset(dataset)
    _model_entry(name)
    if nproc is not None and nproc > 1:
        raise typer.Exit(_launch_torchrun(ctx, nproc))
    out = out or Path("runs") / name
    _check_writable(out, "--out")
    from genmnist.io import read_json
    from genmnist.models import create_model
    from genmnist.models.base import CONFIG_FILE
    from genmnist.training import Trainer, TrainingInterrupted, TrainOptions

    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise GenmnistError(
                f"--resume: {out} holds no run (no {CONFIG_FILE}); nothing to resume"
            )
        record = read_json(out / CONFIG_FILE)
        if record.get("model") != name:
            raise UsageProblem(f"{out} holds a '{record.get('model')}' run, not '{name}'")
        overrides = record.get("config", {})
        if config is not None:
            raise UsageProblem("--config cannot change a run being resumed")
    else:
        overrides = _read_overrides(config) if config is not None else {}
    import torch

    torch.manual_seed(seed)  # the initial weights are part of the run: same seed, same run
    model = create_model(name, **overrides)
    options = TrainOptions(
        out=out,
        epochs=epochs,
        max_steps=max_steps,
        dataset=dataset,
        data_dir=str(data_dir) if data_dir is not None else None,
        seed=seed,
        resume=resume,
        checkpoint_every=checkpoint_every,
        device=device,
        progress=not quiet and sys.stderr.isatty(),
    )
    try:
        Trainer(model, options).fit()
    except TrainingInterrupted as exc:
        if not getattr(exc, "rank_quiet", False):  # under torchrun, rank 0 says it
            _console().print(f"[yellow]{exc}[/]")
        raise typer.Exit(130) from None
    except OSError as exc:  # reads are checked (DataError, CheckpointError): a failed write
        raise GenmnistError(f"cannot write the run in {out}: {_os_reason(exc)}") from None


def _check_writable(folder: Path, option: str) -> None:
    """Fail early, in one line, if files cannot be written in ``folder`` (which need not
    exist yet: it is created with its parents)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise GenmnistError(f"{option}: cannot write under {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GenmnistError(f"{option}: cannot write under {folder}: {existing} is read-only")


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason


def _launch_torchrun(ctx, nproc: int) -> int:
    """Run this same `train` command in ``nproc`` processes through torchrun."""
    from genmnist import distributed

    if distributed.environment().distributed:
        raise UsageProblem("--nproc starts torchrun itself; leave it out under torchrun")
    args = [ctx.info_name]
    for param in ctx.command.params:  # the parsed command line, minus --nproc
        value = ctx.params.get(param.name)
        if param.name == "nproc" or value is None:
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
        elif getattr(param, "is_flag", False):
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return distributed.launch(nproc, args)


def _read_overrides(path: Path) -> dict:
    from genmnist.io import read_json

    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a whole config.json from another run
    if not isinstance(data, dict):
        raise GenmnistError(f"{path}: expected a JSON object of config fields")
    return data


@app.command()
def sample(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    n: Annotated[int, typer.Option("-n", "--num", min=1, help="Number of images.")] = 64,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (default NAME-samples.png).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; sample i is the same for any -n.")] = None,
    label: Annotated[
        int | None, typer.Option(min=0, help="Class label (conditional models).")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="png, npy or pt (default: from -o).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Run or model folder (default: shipped weights).")
    ] = None,
    dataset: DatasetOption = "mnist",
    nrow: Annotated[int | None, typer.Option(min=1, help="Images per grid row.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images generated at once.")] = 1000,
    sampler: SamplerOption = None,
    steps: StepsOption = None,
    spacing: SpacingOption = None,
    guidance: GuidanceOption = None,
    temperature: TemperatureOption = None,
    gif: Annotated[
        Path | None, typer.Option(help="Also write an animated GIF of the denoising.")
    ] = None,
) -> None:
    """Draw samples and save them as a PNG grid, a .npy array or a .pt tensor."""
    from genmnist.viz import OUTPUT_FORMATS

    _check_dataset(dataset)
    entry = _model_entry(name)
    if checkpoint is None and label is not None:  # shipped weights use the registered config
        _check_label(name, label, _default_config(entry).get("num_classes", 0))
    output = output or Path(f"{name}-samples.{fmt or 'png'}")
    fmt = fmt or output.suffix.lstrip(".").lower() or "png"
    if fmt not in OUTPUT_FORMATS:
        raise UsageProblem(
            f"unknown output format '{fmt}'; choose from {', '.join(OUTPUT_FORMATS)} "
            "(--format, or the suffix of -o)"
        )
    if checkpoint is not None and not checkpoint.is_dir():
        raise GenmnistError(f"--checkpoint: {checkpoint} is not a folder")
    for option, target in (("--output", output), ("--gif", gif)):
        if target is not None and target.is_dir():
            raise GenmnistError(f"{option}: {target} is a folder; give a file name")
        if target is not None:
            _check_writable(target.parent, option)
    import random

    from genmnist.models import load
    from genmnist.viz import save_samples

    model = load(checkpoint if checkpoint is not None else name, dataset=dataset)
    if model.name != name:
        raise UsageProblem(f"{checkpoint} holds a '{model.name}' model, not '{name}'")
    if label is not None:
        _check_label(name, label, model.config.num_classes)
    options = _sampling_options(
        model,
        sampler=sampler,
        steps=steps,
        spacing=spacing,
        guidance=guidance,
        temperature=temperature,
        gif=gif,
    )
    if seed is None:
        seed = random.randrange(2**31)
    default_rows = 10 if model.conditional and label is None else 8
    frames: list = []
    if gif is not None:
        from genmnist.viz import make_grid

        first_batch = {"done": False}

        def keep_frame(i, x_t, x0):  # animate the first batch only
            first_batch["done"] = first_batch["done"] or (i == 0 and bool(frames))
            if not first_batch["done"]:
                frames.append(make_grid(x_t.float().cpu(), nrow or default_rows))

        options["callback"] = keep_frame
    images = model.sample(n, labels=label, seed=seed, batch_size=batch_size, **options)
    try:
        path = save_samples(images, output, fmt=fmt, nrow=nrow or default_rows)
        if gif is not None:
            from genmnist.viz import save_gif

            save_gif(frames, gif)
    except OSError as exc:
        raise GenmnistError(f"cannot write the samples: {_os_reason(exc)}") from None
    if gif is not None:
        _console().print(f"Saved the denoising trajectory to {gif}")
    _console().print(f"Saved {n} samples of {name} (seed {seed}) to {path}")


def _check_label(name: str, label: int, num_classes: int) -> None:
    if num_classes == 0:
        raise UsageProblem(f"'{name}' is unconditional: it takes no --label")
    if label >= num_classes:
        raise UsageProblem(f"--label must be in 0..{num_classes - 1} for '{name}'")


def _sampling_options(model, **given) -> dict:
    """The model-specific sampling options that were given, checked against the model."""
    names = {"gif": "callback"}
    options = {}
    for flag, value in given.items():
        if value is None:
            continue
        option = names.get(flag, flag)
        if option not in model.sampling_options:
            raise UsageProblem(f"'{model.name}' takes no --{flag}")
        if flag == "sampler":
            from genmnist.diffusion import SAMPLERS
            from genmnist.errors import RegistryError

            try:
                SAMPLERS.get(value)
            except RegistryError as exc:
                raise UsageProblem(str(exc)) from None
        if flag == "spacing":
            from genmnist.diffusion.samplers import SPACINGS

            if value not in SPACINGS:
                raise UsageProblem(
                    f"unknown --spacing '{value}'; choose from {', '.join(SPACINGS)}"
                )
        if flag == "guidance" and not model.takes_guidance:
            raise UsageProblem(f"'{model.name}' {model.no_guidance_reason}: it takes no --guidance")
        if flag == "temperature" and not (math.isfinite(value) and value > 0):
            raise UsageProblem(f"--temperature must be a positive number, got {value}")
        if flag != "gif":
            options[option] = value
    return options


# eval, compare and train-evaluator live in their own module (imported after the helpers
# above, which it uses).
from genmnist.evaluation_cli import register as _register_evaluation  # noqa: E402

_register_evaluation(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``genmnist`` script."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("GENMNIST_DEBUG", "") not in ("", "0")
    previous_format = warnings.formatwarning
    if not debug:  # warnings (a broken plugin...) in one line too, without source lines
        warnings.formatwarning = _one_line_warning
    try:
        code = app(args=args or ["--help"], prog_name="genmnist", standalone_mode=False)
    except GenmnistError as exc:
        if debug:
            raise
        code = getattr(exc, "exit_code", 1)
        if not getattr(exc, "rank_quiet", False):  # under torchrun, another rank says it
            code = _fail(str(exc), code)
    except KeyboardInterrupt:
        code = _fail("interrupted", 130)
    except Exception as exc:
        # Typer's (or click's) usage errors: duck-typed, since Typer >= 0.17 vendors click.
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            code = _fail(exc.format_message(), exc.exit_code)
        elif type(exc).__name__ == "Abort":
            code = _fail("aborted", 130)
        elif debug:
            raise
        else:  # keep tracebacks away from users unless asked for
            code = _fail(f"unexpected {type(exc).__name__}: {exc} (GENMNIST_DEBUG=1 shows more)", 1)
    finally:
        warnings.formatwarning = previous_format
    sys.exit(code if isinstance(code, int) else 0)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    text = str(message).strip()
    return f"warning: {text.splitlines()[0] if text else category.__name__}\n"


def _fail(message: str, code: int) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"error: {first_line}", err=True)
    return code
