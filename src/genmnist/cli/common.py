"""What the command modules share: consoles, `UsageProblem`, option declarations and the
model resolver (run-folder files are `genmnist.run_folder`'s).

Nothing here imports torch at module level, so ``genmnist --help`` stays fast, and nothing
imports the app (:mod:`genmnist.cli.app`): command modules import this module, never the
other way round.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from genmnist.errors import ConfigError, GenmnistError, RegistryError

if TYPE_CHECKING:
    from genmnist.models.base import GenerativeModel


class UsageProblem(GenmnistError):
    """A bad argument or combination of arguments (exit code 2, like click's usage errors)."""

    exit_code = 2


# ------------------------------------------------------------------------------ consoles
def console():
    """The console commands print their results on (stdout)."""
    from rich.console import Console

    return Console(highlight=False)


def err_console():
    """The console for progress and warnings (stderr), so stdout stays parseable."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


# ------------------------------------------------------------------------------ options
DatasetOption = Annotated[
    str, typer.Option("--dataset", "-d", help="mnist or fashion-mnist.", show_default=True)
]
#: The dataset of a command not told which and not given a run folder that knows its own.
DEFAULT_DATASET = "mnist"
#: ``--dataset`` of the commands that read a model: a run folder knows its dataset, so
#: evaluating or sampling it needs no flag (None: that dataset, else mnist).
ModelDatasetOption = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        "-d",
        help="mnist or fashion-mnist (default: the dataset a run folder was trained on, "
        "else mnist).",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Path | None, typer.Option(help="Data root (default: $GENMNIST_DATA or ~/.cache).")
]
CheckpointOption = Annotated[
    Path | None, typer.Option(help="Run or model folder (default: shipped weights).")
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace outputs that exist (without it, an existing file is kept)."
    ),
]
# Diffusion and flow sampling options, shared by `sample` and `eval` (other models
# refuse them).
SamplerOption = Annotated[
    str | None,
    typer.Option(
        help="Sampler: ddim, dpmpp-2m, ddpm, euler, heun (diffusion); euler, midpoint, heun, "
        "adaptive (flow); mean, or a flow sampler (meanflow)."
    ),
]
StepsOption = Annotated[int | None, typer.Option(min=1, help="Diffusion or flow sampling steps.")]
SpacingOption = Annotated[
    str | None, typer.Option(help="Diffusion step spacing: uniform, trailing or log-snr.")
]
TimeShiftOption = Annotated[
    float | None,
    typer.Option(help="Flow sampling-time shift: 1 even, above 1 more steps near pure noise."),
]
GuidanceOption = Annotated[
    float | None,
    typer.Option(
        help="Guidance scale of a diffusion or flow model that takes one: classifier-free guidance "
        "toward a label or the model's own clusters, or autoguidance; 1 turns it off.",
    ),
]
GuidanceIntervalOption = Annotated[
    tuple[float, float] | None,
    typer.Option(
        metavar="LOW HIGH",
        help="Guide only where the noise level's log-SNR is in [LOW, HIGH] (e.g. -3.4 2.6); "
        "plain conditional steps elsewhere.",
    ),
]
TemperatureOption = Annotated[
    float | None,
    typer.Option(
        help="Spread of the latent draws (a VAE's prior, a GAN's noise): below 1 gives "
        "cleaner, less diverse samples."
    ),
]


# ------------------------------------------------------------------------------ names
def check_dataset(dataset: str | None) -> str | None:
    """``dataset`` if genmnist knows it (or None: not given); else a `UsageProblem` listing
    the known ones."""
    from genmnist.data import check_dataset_name
    from genmnist.errors import DataError

    if dataset is None:
        return None
    try:
        return check_dataset_name(dataset)
    except DataError as exc:
        raise UsageProblem(str(exc)) from None


def model_entry(name: str):
    """The registry entry of ``name``; an unknown or broken name is a `UsageProblem`
    (with the registry's suggestions)."""
    from genmnist.registry import MODELS

    try:
        return MODELS.entry(name)
    except RegistryError as exc:
        raise UsageProblem(str(exc)) from None


def default_config(entry) -> dict[str, Any]:
    """The config a registered entry builds, as JSON values (builds no model)."""
    return entry.obj.config_class().replace(**entry.defaults).to_dict()


# ------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class Resolved:
    """A model the CLI was pointed at, and where it came from."""

    model: GenerativeModel
    #: The run or model folder it was loaded from; None for shipped weights.
    folder: Path | None
    #: How a report names its origin: the folder, or ``shipped weights (DATASET)``.
    source: str
    #: The dataset the command works on: the one asked for, else the run folder's, else
    #: `DEFAULT_DATASET`.
    dataset: str

    def __iter__(self):
        """Unpacks as ``model, folder, source`` (no copies, unlike `dataclasses.astuple`)."""
        return iter((self.model, self.folder, self.source))


def model_folder(name_or_spec: str, checkpoint: Path | None) -> Path | None:
    """The run or model folder a NAME argument and an optional ``--checkpoint`` point at,
    or None for a registered name (see `resolve_model`); loads nothing.

    Raises:
        UsageProblem: unknown or broken name (with suggestions).
        GenmnistError: the checkpoint folder does not exist.
    """
    from genmnist.registry import MODELS

    if checkpoint is not None and not checkpoint.is_dir():
        raise GenmnistError(f"--checkpoint: {checkpoint} is not a folder")
    folder = checkpoint
    if folder is None and name_or_spec not in MODELS and Path(name_or_spec).is_dir():
        folder = Path(name_or_spec)
    if folder is None or checkpoint is not None:
        if checkpoint is None and ("/" in name_or_spec or os.sep in name_or_spec):
            raise GenmnistError(f"{name_or_spec}: no such checkpoint folder")
        model_entry(name_or_spec)  # a usage error with suggestions, before any loading
    return folder


def resolve_model(
    name_or_spec: str, checkpoint: Path | None, dataset: str | None, *, weights: bool = True
) -> Resolved:
    """The model a command means by a NAME argument and an optional ``--checkpoint``.

    * ``NAME`` alone: the registered model with its shipped weights for ``dataset``
      (``weights=False``: a fresh, untrained one with the registered config).
    * ``FOLDER`` alone (a run or model folder): the model saved there, whatever its name.
    * ``NAME --checkpoint FOLDER``: the model saved there, which must be a ``NAME``.

    ``dataset`` None (no ``--dataset``) means the dataset the folder's run was trained on,
    else mnist. When the folder is a ``genmnist train`` run on another dataset than the
    ``dataset`` asked for, a warning says so on stderr.

    Raises:
        UsageProblem: unknown or broken name (with suggestions), or the folder holds
            another model.
        GenmnistError: the checkpoint folder does not exist.
        CheckpointError: the folder's files are broken.
        RegistryError: no weights ship for ``NAME`` on ``dataset``.
    """
    from genmnist.models import create_model, load

    folder = model_folder(name_or_spec, checkpoint)
    if folder is None:
        dataset = dataset or DEFAULT_DATASET
        if not weights:
            return Resolved(create_model(name_or_spec), None, "registered defaults", dataset)
        model = load(name_or_spec, dataset=dataset)
        return Resolved(model, None, f"shipped weights ({dataset})", dataset)
    from genmnist.run_folder import run_dataset

    trained_on = run_dataset(folder)
    if dataset is not None and trained_on is not None and trained_on != dataset:
        err_console().print(
            f"[yellow]warning[/]: {folder} was trained on {trained_on}, not {dataset} "
            f"(leave out --dataset, or pass --dataset {trained_on})"
        )
    dataset = dataset or trained_on or DEFAULT_DATASET
    model = load(folder, dataset=dataset)
    if checkpoint is not None and model.name != name_or_spec:
        raise UsageProblem(f"{checkpoint} holds a '{model.name}' model, not '{name_or_spec}'")
    return Resolved(model, folder, str(folder), dataset)


# ------------------------------------------------------------------------------ sampling
def sampling_options(model: GenerativeModel, **given: Any) -> dict[str, Any]:
    """The sampling flags that were given (not None), as ``model.sample`` options.

    Only says which flags a model has no use for, naming the flag; the values are checked
    by the model itself when it samples (see `sampling_usage`).
    """
    names = {"gif": "callback"}
    options = {}
    for flag, value in given.items():
        if value is None:
            continue
        option = names.get(flag, flag)
        if option not in model.sampling_options:
            raise UsageProblem(f"'{model.name}' takes no --{flag.replace('_', '-')}")
        if flag != "gif":
            options[option] = value
    return options


@contextmanager
def sampling_usage(options: dict[str, Any] | None = None) -> Iterator[None]:
    """Turn the model's refusal of its sampling arguments into a `UsageProblem` (exit 2).

    A model checks its sampling arguments (n, labels, sampler, steps, temperature...) when
    it samples and raises `ConfigError` (for an unknown sampler name, `RegistryError`).
    Raised there, both mean the command line asked for something the model cannot do. A
    message that starts with the name of one of the given ``options`` names its flag.
    """
    try:
        yield
    except (ConfigError, RegistryError) as exc:
        message = str(exc)
        for option in options or {}:
            if message.startswith(f"{option} "):
                message = f"--{option.replace('_', '-')}{message[len(option) :]}"
        raise UsageProblem(message) from None


def check_sampling(model: GenerativeModel, options: dict[str, Any], seed: int) -> None:
    """Draw one image with ``options`` before a long command starts, so that options the
    model refuses (or a setting that samples NaN) fail in one line before any progress is
    printed."""
    trial = {k: v for k, v in options.items() if k != "callback"}
    with sampling_usage(options):
        model.sample(1, seed=seed, batch_size=1, **trial)


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for ``total`` images, when stderr is a terminal (silent
    otherwise, so logs and pipes stay clean); yields ``update(done)``."""
    if not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err_console(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


# ------------------------------------------------------------------------------ files
def check_writable(folder: Path, option: str) -> None:
    """Fail early, in one line, if files cannot be written in ``folder`` (which need not
    exist yet: it is created with its parents)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise GenmnistError(f"{option}: cannot write under {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GenmnistError(f"{option}: cannot write under {folder}: {existing} is read-only")


def check_output_file(path: Path, option: str, overwrite: bool = False) -> None:
    """Fail early, in one line, if the output file ``path`` would not be written: a
    folder, a socket, a dangling link... (see `genmnist.io.check_output`), no write
    permission where it would go, or a file that exists and ``overwrite`` is off (a
    device such as ``/dev/null`` is written through, never refused)."""
    from genmnist.io import check_output

    try:
        target = check_output(path)
    except GenmnistError as exc:
        raise GenmnistError(f"{option}: {exc}") from None
    if target.is_file() and not overwrite:
        raise UsageProblem(f"{option}: {path} already exists; pass --overwrite to replace it")
    if not target.exists() or target.is_file():  # not written through a device or FIFO
        check_writable(target.parent, option)


def os_reason(exc: OSError) -> str:
    """An `OSError` in a few words: its reason and the file it is about."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason
