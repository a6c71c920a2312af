"""Where the trainer's metrics records go: ``metrics.jsonl`` always, and any logger named
in `TrainOptions.loggers` (``tensorboard``).

Each record is what the trainer logs at an interval: ``step``, ``epoch``, the losses and
the model's `training_metrics`, ``lr``, ``images_per_second`` and ``time``. A logger is a
small class registered in `METRICS_LOGGERS`; the trainer opens the ones a run names on
rank 0 (the process that writes the run folder), hands each record to all of them and
closes them when the run ends, so a new destination is one new class, not a branch in
the loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from genmnist import run_folder
from genmnist.errors import GenmnistError
from genmnist.registry import Registry

#: Metrics loggers by name (``jsonl``, ``tensorboard``): classes taking
#: ``(folder, step)``.
METRICS_LOGGERS: Registry[type[MetricsLogger]] = Registry("metrics logger")


class LoggerUnavailable(GenmnistError):
    """A logger's package is not installed (the message names the extra to install)."""


class MetricsLogger:
    """Base class: receives every metrics record of a run.

    Args:
        folder: The run folder.
        step: The step the run starts from (0, or the step of the checkpoint it resumes
            from: records past it, from before an interruption, are stale).
    """

    #: Registered name.
    name: ClassVar[str] = ""

    def __init__(self, folder: Path, step: int) -> None:
        self.folder, self.start_step = Path(folder), step

    @classmethod
    def require(cls) -> None:
        """Raise `LoggerUnavailable` if what the logger needs is not installed (called
        before the run starts, so it fails in one line at once). Default: nothing."""

    def write(self, record: dict[str, Any]) -> None:
        """Log one record (``record["step"]`` is the global optimizer step)."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release what the logger holds. Default: nothing."""


@METRICS_LOGGERS.register("jsonl")
class JsonLinesLogger(MetricsLogger):
    """The run folder's ``metrics.jsonl``: one JSON object per record (always on)."""

    name = "jsonl"

    def write(self, record: dict[str, Any]) -> None:
        run_folder.append_metrics(self.folder, record)


@METRICS_LOGGERS.register("tensorboard")
class TensorBoardLogger(MetricsLogger):
    """TensorBoard event files in the run folder's ``tensorboard/``: every number of a
    record as a scalar of that name at its step (the same numbers as ``metrics.jsonl``).
    A resumed run drops the events past its checkpoint, as the metrics log does.
    Needs the ``tensorboard`` package (``pip install 'genmnist[tensorboard]'``)."""

    name = "tensorboard"

    def __init__(self, folder: Path, step: int) -> None:
        super().__init__(folder, step)
        self.require()
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard drops the events at and past ``purge_step``; the record of the
        # checkpoint's own step is kept, as in metrics.jsonl.
        purge = step + 1 if step > 0 else None
        self.writer = SummaryWriter(str(run_folder.tensorboard_dir(folder)), purge_step=purge)

    @classmethod
    def require(cls) -> None:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise LoggerUnavailable(
                "TensorBoard logging needs the tensorboard package: "
                "pip install 'genmnist[tensorboard]'"
            ) from None

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and _number(value):
                self.writer.add_scalar(key, float(value), step)
        self.writer.flush()  # records are minutes apart: show them at once

    def close(self) -> None:
        self.writer.close()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_loggers(names: tuple[str, ...] | list[str]) -> None:
    """Fail at once, in one line, on an unknown logger name (`RegistryError`) or one whose
    package is missing (`LoggerUnavailable`)."""
    for name in names:
        METRICS_LOGGERS.get(name).require()


class Loggers:
    """The loggers of one run, ``metrics.jsonl`` first; the trainer calls `write` with
    each record and `close` at the end.

    Args:
        names: Further loggers by registered name (``("tensorboard",)``).
        folder: The run folder.
        step: The step the run starts from.
    """

    def __init__(self, names: tuple[str, ...] | list[str], folder: Path, step: int) -> None:
        self.loggers: list[MetricsLogger] = []
        try:
            for name in ("jsonl", *[n for n in names if n != "jsonl"]):
                self.loggers.append(METRICS_LOGGERS.get(name)(folder, step))
        except BaseException:
            self.close()
            raise

    def write(self, record: dict[str, Any]) -> None:
        """Hand ``record`` to every logger."""
        for logger in self.loggers:
            logger.write(record)

    def close(self) -> None:
        """Close every logger (each once)."""
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.close()
