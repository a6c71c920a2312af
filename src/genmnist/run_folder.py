"""The run folder and the model folder: the one place that knows their file names.

``genmnist train`` keeps a run folder; `GenerativeModel.save_pretrained` writes a model
folder, the first two files of a run folder:

    runs/x/
      config.json            model config (also what `genmnist sample --checkpoint` reads)
      model.safetensors      latest weights for sampling (EMA weights when EMA is on)
      checkpoint.safetensors everything needed to resume, written atomically
      metrics.jsonl          one JSON record per logging interval
      loss.png               loss curves
      tensorboard/           TensorBoard event files (only with --tensorboard)

This module writes and reads them: the checkpoint with all of its validation (a damaged
or foreign file gives a one-line `CheckpointError`, never another exception), the metrics
log, the curves, and the questions the command line asks of a folder (`holds_run`,
`holds_model`, `run_dataset`, `read_task_record`). It imports nothing of genmnist but
`genmnist.io` and `genmnist.errors`, so the model base class can import its names.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genmnist.errors import CheckpointError, GenmnistError, TrainingError
from genmnist.io import (
    atomic_write,
    file_problem,
    flatten_state,
    is_temp_file_of,
    load_tensors,
    read_json,
    save_tensors,
    unflatten_state,
    write_json,
)

#: ``format`` of a ``config.json`` written by genmnist (a model or run folder).
CONFIG_FORMAT = "genmnist-model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss.png"
#: The files a training writes, all written by name here.
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, METRICS_FILE, CURVE_FILE)
#: The folder of TensorBoard event files, when a run logs there.
TENSORBOARD_DIR = "tensorboard"
#: How TensorBoard names its event files (``events.out.tfevents.<time>.<host>...``).
TENSORBOARD_EVENTS = "events.out.tfevents."
#: The lock a training holds on its folder while it writes it (see `lock_run`).
LOCK_FILE = ".genmnist.lock"
#: Version of the checkpoint layout; a checkpoint of another version is refused.
CHECKPOINT_VERSION = 1
#: Metadata key of the checkpoint's JSON header in the safetensors file.
HEADER_KEY = "genmnist"

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------- questions
def holds_model(folder: PathLike) -> bool:
    """Whether ``folder`` holds a model (a ``config.json``, as a run or an export has)."""
    return (Path(folder) / CONFIG_FILE).is_file()


def holds_run(folder: PathLike) -> bool:
    """Whether ``folder`` holds a training run that ``--resume`` can continue (a checkpoint)."""
    return (Path(folder) / CHECKPOINT_FILE).is_file()


def check_fresh(folder: PathLike, resume: bool, overwrite: bool = False) -> None:
    """`CheckpointError` when a new run (not ``resume``) would write into a folder that is
    not empty: a run, an exported model or any other file there is not this run's, and a
    typo must not overwrite a day of training. ``overwrite`` says the user means it. The
    lock file and temporary files a killed training left do not count."""
    folder = Path(folder)
    if resume or overwrite or not folder.exists():
        return
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; choose another --out")
    try:
        entries = [name for name in os.listdir(folder) if not _leftover(name)]
    except OSError as exc:
        raise CheckpointError(f"{folder}: cannot read ({exc.strerror or exc})") from None
    if not entries:
        return
    if holds_run(folder):
        what, resume_hint = "a run", "--resume to continue it, "
    elif holds_model(folder):
        what, resume_hint = "a model", ""
    else:
        what, resume_hint = f"other files ({', '.join(sorted(entries)[:3])}...)", ""
        if len(entries) <= 3:
            what = f"other files ({', '.join(sorted(entries))})"
    raise CheckpointError(
        f"{folder} already holds {what}; pass {resume_hint}--overwrite to replace it, "
        "or choose another --out"
    )


def _leftover(name: str) -> bool:
    """A file a (killed) training leaves behind that is no part of a run: its lock file or
    a temporary file of one of the run's files."""
    return name == LOCK_FILE or any(is_temp_file_of(name, file) for file in RUN_FILES)


def remove_leftovers(folder: PathLike) -> list[Path]:
    """Delete the temporary files that trainings killed while writing left in ``folder``
    (only names `atomic_write` gives the run's files); returns them. Call it only while
    holding the folder's `lock_run`, so no live writer's file is taken."""
    removed = []
    for name in os.listdir(folder):
        path = Path(folder) / name
        if name != LOCK_FILE and _leftover(name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RunLock:
    """The advisory lock (`fcntl.flock`) a training holds on its run folder; see
    `lock_run`. The kernel drops it when the process dies, so a killed training never
    blocks the next one."""

    def __init__(self, folder: Path, path: Path, fd: int, created: bool) -> None:
        self.folder, self.path, self._fd, self._created = folder, path, fd, created

    def release(self) -> None:
        """Remove the lock file and let go (idempotent). A folder the lock created is
        removed too if the run wrote nothing into it."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before the unlock, so no one locks a stale file
        os.close(self._fd)
        self._fd = None
        if self._created:
            with contextlib.suppress(OSError):  # not empty: the run's files stay
                self.folder.rmdir()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_run(folder: PathLike, resume: bool, overwrite: bool) -> RunLock:
    """Lock ``folder`` for a training that writes it, check that the run may write there
    (`check_fresh`) and remove the temporary files of killed trainings (`remove_leftovers`);
    returns the held lock (released again if a check fails)."""
    lock = lock_run(folder)
    try:
        check_fresh(folder, resume, overwrite)
        remove_leftovers(folder)
    except BaseException:
        lock.release()
        raise
    return lock


def lock_run(folder: PathLike) -> RunLock:
    """Take the run folder ``folder`` (created if needed) for one training: a second
    training into it fails at once with a `CheckpointError` naming it, until this one
    ends (or dies). Where `fcntl` is missing (not POSIX), nothing is locked."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return RunLock(folder, path, os.open(os.devnull, os.O_RDONLY), False)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise CheckpointError(
                    f"{folder}: cannot lock the run folder ({exc.strerror or exc})"
                ) from None
            holder = _lock_holder(path)
            raise CheckpointError(
                f"{folder} is in use by another training{holder}; wait for it to end or "
                "choose another --out"
            ) from None
        try:  # the file may have been removed by the holder that just let go: lock anew
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return RunLock(folder, path, fd, created)
        os.close(fd)


def _lock_holder(path: Path) -> str:
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return ""
    return f" (process {pid})"


def holds_metrics(folder: PathLike) -> bool:
    """Whether ``folder`` holds a training log (``metrics.jsonl``)."""
    return (Path(folder) / METRICS_FILE).is_file()


def read_header(folder: PathLike) -> dict[str, Any] | None:
    """The JSON header of the run's checkpoint, without reading its tensors; None when
    there is no checkpoint or it cannot be read (callers use it for hints only)."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get(HEADER_KEY, "{}"))
    except Exception:  # an unreadable checkpoint only loses the hint
        return None
    return header if isinstance(header, dict) else None


def run_dataset(folder: PathLike) -> str | None:
    """The dataset a run folder was trained on, if its checkpoint says."""
    dataset = (read_header(folder) or {}).get("dataset")
    return dataset if isinstance(dataset, str) else None


def read_task_record(folder: PathLike) -> dict[str, Any] | None:
    """The training task's record in the run's checkpoint (see
    `genmnist.training.TrainingTask.from_record`); None for a run written before tasks
    were recorded (the default data task) or without a readable checkpoint."""
    task = (read_header(folder) or {}).get("task")
    return task if isinstance(task, dict) else None


# ---------------------------------------------------------------------- model files
def read_config(folder: PathLike) -> dict[str, Any]:
    """The ``config.json`` record of a run or model folder.

    Raises:
        CheckpointError: if there is none, or it is not JSON.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} here")
    return read_json(path)


def write_config(folder: PathLike, record: dict[str, Any]) -> Path:
    """Write ``config.json`` (atomically); returns its path."""
    return write_json(Path(folder) / CONFIG_FILE, record)


def write_weights(folder: PathLike, state: dict[str, torch.Tensor], model_name: str) -> Path:
    """Write ``model.safetensors`` (atomically); returns its path."""
    return save_tensors(Path(folder) / WEIGHTS_FILE, state, {"model": model_name})


def weights_path(folder: PathLike) -> Path:
    """Where a run or model folder keeps its weights."""
    return Path(folder) / WEIGHTS_FILE


# ---------------------------------------------------------------------- metrics log
def start_metrics(folder: PathLike) -> None:
    """Begin a fresh run in ``folder``: create it and drop the files of an earlier run
    (there are some only when the user asked to overwrite it; see `check_fresh`), so
    the folder never mixes two runs."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        path = Path(folder) / name
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif path.exists():  # a folder or special file where a run file belongs
            raise CheckpointError(f"{path}: {file_problem(path)}; move it out of the run folder")
    events = tensorboard_dir(folder)
    if events.is_dir() and not events.is_symlink():  # an earlier run's events, not this one's
        for path in events.iterdir():
            if path.name.startswith(TENSORBOARD_EVENTS) and path.is_file():
                path.unlink()


def tensorboard_dir(folder: PathLike) -> Path:
    """Where a run's TensorBoard event files go (``tensorboard --logdir`` this or the run
    folder)."""
    return Path(folder) / TENSORBOARD_DIR


def append_metrics(folder: PathLike, record: dict[str, Any]) -> None:
    """Append one record (a line of JSON) to the run's metrics log."""
    with open(Path(folder) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def trim_metrics(folder: PathLike, step: int) -> None:
    """Drop records past ``step`` (written after the last checkpoint of a stopped run) and
    unreadable lines, atomically.

    Raises:
        CheckpointError: if the log is not a readable text file (see `read_metrics`).
    """
    path = Path(folder) / METRICS_FILE
    if not os.path.lexists(path):
        return
    kept = [
        line
        for line in _metrics_lines(path)
        if (record := parse_metrics_line(line)) is not None and record["step"] <= step
    ]
    text = "".join(line + "\n" for line in kept)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def parse_metrics_line(line: str) -> dict[str, Any] | None:
    """One line of ``metrics.jsonl`` as a record: a JSON object whose ``step`` is a finite
    number; None for anything else (a line torn by a killed run, junk)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
        return None
    return record


def _metrics_lines(path: Path) -> list[str]:
    """The lines of a metrics log; `CheckpointError` naming the file if it is not a
    readable UTF-8 text file (a folder, a FIFO, binary junk)."""
    from genmnist.io import file_problem

    if problem := file_problem(path):
        raise CheckpointError(f"{path}: {problem}")
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise CheckpointError(
            f"{path}: not a text file (damaged training log); move it away to go on"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_metrics(run: PathLike) -> list[dict[str, Any]]:
    """The records of ``run/metrics.jsonl`` (or of that file given directly), in order.

    Unreadable lines (a run killed mid-write, junk) and lines without a finite ``step``
    are skipped.

    Raises:
        CheckpointError: if there is no such file, or it is not a readable text file.
    """
    path = Path(run)
    if path.is_dir() and not path.name.endswith(".jsonl"):
        path = path / METRICS_FILE
    if not os.path.lexists(path):
        raise CheckpointError(f"{path}: no training log here")
    return [r for line in _metrics_lines(path) if (r := parse_metrics_line(line)) is not None]


def write_curves(folder: PathLike, title: str) -> Path:
    """Plot every logged ``*loss`` against the step into ``loss.png`` (one labelled panel
    per loss with matplotlib, else one Pillow chart, see `genmnist.viz`); returns its
    path."""
    from genmnist.viz import save_training_curves

    series: dict[str, list[tuple[float, float]]] = {}
    for record in read_metrics(folder):
        for key, value in record.items():
            if _finite_number(value) and key.endswith("loss"):
                series.setdefault(key, []).append((record["step"], float(value)))
    return save_training_curves(series, Path(folder) / CURVE_FILE, title=title)


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------- checkpoint
@dataclass
class TrainingState:
    """What a checkpoint holds besides its header: state dicts of the model, its weight
    average (None without EMA), the optimizers and schedulers by phase, the global
    torch RNG state, and the networks the training task trains beside the model (None
    when it has none)."""

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizers: dict[str, Any]
    schedulers: dict[str, Any]
    rng: torch.Tensor
    task: dict[str, torch.Tensor] | None = None


def write_checkpoint(folder: PathLike, header: dict[str, Any], state: TrainingState) -> Path:
    """Write ``checkpoint.safetensors`` atomically: the tensors of ``state`` and a JSON
    header (``header`` plus the layout version and the state's structure).

    Raises:
        TrainingError: if a tensor about to be saved is NaN or inf (the last good
            checkpoint is left as it was).
    """
    rng = {"torch": state.rng}
    skeleton, tensors = flatten_state(
        {"optimizers": state.optimizers, "schedulers": state.schedulers, "rng": rng}
    )
    tensors.update({f"model.{k}": v for k, v in state.model.items()})
    if state.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in state.ema.items()})
    if state.task is not None:
        tensors.update({f"task.{k}": v for k, v in state.task.items()})
    for key, value in tensors.items():  # a finite loss can still give a step to inf
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise TrainingError(
                f"'{key}' became NaN or inf at step {header.get('step')}; stopped without "
                f"overwriting the last good checkpoint in {folder}"
            )
    full = {"version": CHECKPOINT_VERSION, **header, "state": skeleton}
    return save_tensors(Path(folder) / CHECKPOINT_FILE, tensors, {HEADER_KEY: json.dumps(full)})


@dataclass
class Checkpoint:
    """A checkpoint read and checked by `read_checkpoint`; `restore` loads it into a run."""

    path: Path
    header: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def restore(
        self,
        model: torch.nn.Module,
        ema: torch.nn.Module | None,
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, Any],
        task_networks: torch.nn.Module | None = None,
    ) -> None:
        """Load the weights, weight average, optimizer and scheduler states, the torch
        RNG state and the training task's own networks, each checked against the live
        object first.

        Raises:
            CheckpointError: naming the file, for anything that does not fit.
        """
        tensors = self.tensors
        # weights saved by an older version of the model class have older names
        migrate = getattr(model, "migrate_weights", lambda weights: weights)

        def part(prefix: str) -> dict[str, torch.Tensor]:
            cut = len(prefix)
            return migrate({k[cut:]: v for k, v in tensors.items() if k.startswith(prefix)})

        try:
            model.load_state_dict(part("model."))
            if task_networks is not None:
                cut = len("task.")
                task_networks.load_state_dict(
                    {k[cut:]: v for k, v in tensors.items() if k.startswith("task.")}
                )
            if ema is not None:  # AveragedModel: the model's names behind "module."
                averaged = part("ema.module.")
                rest = {k[4:]: v for k, v in tensors.items()
                        if k.startswith("ema.") and not k.startswith("ema.module.")}  # fmt: skip
                ema.load_state_dict({**{f"module.{k}": v for k, v in averaged.items()}, **rest})
            state = unflatten_state(self.header["state"], tensors)
            for phase, optimizer in optimizers.items():
                saved = state["optimizers"][phase]
                check_optimizer_state(optimizer, saved, f"optimizers.{phase}")
                optimizer.load_state_dict(saved)
            for phase, scheduler in schedulers.items():
                saved = state["schedulers"][phase]
                check_like(scheduler.state_dict(), saved, f"schedulers.{phase}")
                scheduler.load_state_dict(saved)
            torch.set_rng_state(state["rng"]["torch"])
            _check_loaded_finite(model, ema, optimizers)
        except CheckpointError as exc:
            raise CheckpointError(f"{self.path}: {exc}") from None
        except (
            KeyError, IndexError, TypeError, AttributeError, RuntimeError, ValueError, OverflowError
        ) as exc:  # fmt: skip
            raise CheckpointError(
                f"{self.path}: checkpoint does not fit this model ({exc})"
            ) from None


def _check_loaded_finite(model, ema, optimizers) -> None:
    """`CheckpointError` if a loaded floating-point tensor is NaN or inf in the dtype it
    was cast to (float64 values beyond float32's range pass the file's own check)."""
    named = [("model", model.state_dict())]
    if ema is not None:
        named.append(("ema", ema.state_dict()))
    for phase, optimizer in optimizers.items():
        for i, values in enumerate(optimizer.state.values()):
            named.append((f"optimizers.{phase}.{i}", values))
    for prefix, tensors in named:
        for key, value in tensors.items():
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ):
                raise CheckpointError(
                    f"'{prefix}.{key}' holds NaN or inf values as {value.dtype} (values "
                    "beyond the range of the run's dtype)"
                )


def read_checkpoint(
    folder: PathLike,
    model_name: str,
    config: dict[str, Any],
    migrate: Callable[[dict[str, Any], int], dict[str, Any]] | None = None,
) -> Checkpoint:
    """Read ``checkpoint.safetensors`` for ``--resume`` and check its header: a genmnist
    checkpoint of this layout version, of the model ``model_name`` with exactly
    ``config``, with usable step, seed, dataset and number of processes.

    ``migrate(config, config_version)`` upgrades the saved config of a run written by an
    older version of the model class before the comparison (a header without
    ``config_version`` was written at version 1).

    Raises:
        CheckpointError: naming the file, if it is missing, damaged or of another run.
    """
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}; nothing to resume")
    tensors, metadata = load_tensors(path)
    try:
        header = json.loads(metadata[HEADER_KEY])
    except (KeyError, ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a genmnist training checkpoint")
    if header.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {header.get('version')}")
    saved_config = header.get("config")
    version = header.get("config_version", 1)
    if migrate is not None and isinstance(saved_config, dict) and isinstance(version, int):
        try:
            saved_config = migrate(saved_config, version)
        except GenmnistError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    if header.get("model") != model_name or saved_config != config:
        raise CheckpointError(
            f"{path}: the checkpoint holds a '{header.get('model')}' run with another "
            "config; resume with the run's own config (genmnist train reads it from the run)"
        )
    if problem := _header_problem(header):
        raise CheckpointError(f"{path}: {problem}")
    return Checkpoint(path, header, tensors)


def _header_problem(header: dict[str, Any]) -> str | None:
    """What is wrong with the values of a checkpoint header that the loop uses, if anything."""

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    step, seed, world_size = header.get("step"), header.get("seed"), header.get("world_size", 1)
    if not whole(step) or step < 0:
        return f"invalid step {step!r} in the checkpoint header"
    if not whole(seed) or not -(2**63) <= seed * 100_003 < 2**63:  # seeds the loop can use
        return f"invalid seed {seed!r} in the checkpoint header"
    if header.get("dataset", "mnist") not in ("mnist", "fashion-mnist"):
        return f"invalid dataset {header.get('dataset')!r} in the checkpoint header"
    if not whole(world_size) or world_size < 1:
        return f"invalid world_size {world_size!r} in the checkpoint header"
    if "task" in header and not (
        isinstance(header["task"], dict) and isinstance(header["task"].get("name"), str)
    ):
        return f"invalid task {header['task']!r} in the checkpoint header"
    if not isinstance(header.get("state"), dict):
        return "the checkpoint header holds no training state"
    return None


def check_like(reference: Any, value: Any, where: str) -> None:
    """Raise `CheckpointError` unless the saved ``value`` looks like ``reference`` (the
    state of a fresh optimizer or scheduler): values of the same types under the keys both
    have, lists of the same length, tensors of the same shape, finite numbers. Keys only
    one side has are left to the loader (PyTorch fills in keys older versions lack)."""
    if isinstance(reference, dict):
        if not isinstance(value, dict):
            raise CheckpointError(f"'{where}' should be a mapping, got {type(value).__name__}")
        for key in reference.keys() & value.keys():
            check_like(reference[key], value[key], f"{where}.{key}")
    elif isinstance(reference, list | tuple):
        if not isinstance(value, list | tuple) or len(value) != len(reference):
            raise CheckpointError(f"'{where}' should be a list of {len(reference)} values")
        for i, (a, b) in enumerate(zip(reference, value, strict=True)):
            check_like(a, b, f"{where}.{i}")
    elif isinstance(reference, torch.Tensor):
        if not isinstance(value, torch.Tensor) or value.shape != reference.shape:
            raise CheckpointError(f"'{where}' should be a tensor of shape {tuple(reference.shape)}")
    else:  # a float may be saved as an int; None stands for an unset flag
        allowed = {float: (int, float), type(None): (type(None), bool)}.get(
            type(reference), (type(reference),)
        )
        if type(value) not in allowed or (isinstance(value, float) and not math.isfinite(value)):
            raise CheckpointError(f"'{where}' has an invalid value {value!r}")


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: Any, where: str) -> None:
    """`check_like` for an optimizer's state: its hyper-parameters against a fresh one's,
    and each parameter's tensors (scalars, or the parameter's shape)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"'{where}' is not an optimizer state")
    check_like(optimizer.state_dict()["param_groups"], saved.get("param_groups"), where)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # an optimizer keeps the same entries for every parameter it has stepped, so a state
    # whose entries differ between parameters was damaged (and would fail mid-step)
    entries = {tuple(sorted(map(str, v))) for v in saved["state"].values() if isinstance(v, dict)}
    if len(entries) > 1:
        raise CheckpointError(f"'{where}' holds different state entries for different parameters")
    for index, values in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise CheckpointError(f"'{where}' holds state for an unknown parameter {index!r}")
        if not isinstance(values, dict):
            raise CheckpointError(f"'{where}.state.{index}' is not a mapping")
        for key, value in values.items():
            shape = params[index].shape
            if not isinstance(value, torch.Tensor) or (value.ndim and value.shape != shape):
                raise CheckpointError(
                    f"'{where}.state.{index}.{key}' should be a tensor of shape {tuple(shape)}"
                )
