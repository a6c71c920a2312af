"""What a training run is asked to do (`TrainOptions`) and what it reports (`TrainResult`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from genmnist.errors import ConfigError, TrainingError


@dataclass
class TrainOptions:
    """How to run training (the model config says *what* to train).

    Attributes:
        out: Run folder.
        epochs: Passes over the data (default: the model's
            `GenerativeModel.training_epochs`: the config's ``epochs``, else 10).
        max_steps: Stop after this many optimizer steps (overrides ``epochs``).
        dataset: ``mnist`` or ``fashion-mnist``.
        data_dir: Data root (default: ``GENMNIST_DATA`` or the user cache).
        seed: Seed of everything random in the run.
        resume: Continue the run in ``out``; an error if there is none.
        overwrite: Start a new run in ``out`` even if it is not empty, replacing the run
            or model there (without it, a new run refuses a folder that is not empty).
        checkpoint_every: Steps between checkpoints (also written at the end of each epoch
            and when the run is interrupted).
        log_every: Steps between metrics records.
        device: ``cpu``, ``cuda``... (default: CUDA when available).
        skip_nonfinite: Skip steps whose loss is NaN/inf instead of stopping.
        progress: Show a progress bar.
        loggers: Where the metrics records go besides ``metrics.jsonl``: names in
            `genmnist.training.loggers.METRICS_LOGGERS` (``("tensorboard",)``).
        compile: Run the model's networks through ``torch.compile``
            (`genmnist.compiling`; measured not to pay on a CPU for short runs).
    """

    out: Path = Path("runs/default")
    epochs: int | None = None
    max_steps: int | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    seed: int = 42
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 200
    log_every: int = 50
    device: str | None = None
    skip_nonfinite: bool = False
    progress: bool = True
    loggers: tuple[str, ...] = ()
    compile: bool = False

    def __post_init__(self) -> None:
        """Check the options' types and ranges as they are given (from Python, where no
        CLI parser has checked them), so that a bad one fails at once, by name, and not
        as a ``ZeroDivisionError`` some steps in, or with a run folder that records an
        unknown dataset."""
        from genmnist.data import check_dataset_name
        from genmnist.values import whole_number

        if not isinstance(self.out, str | os.PathLike):
            raise ConfigError(f"out must be a folder path, got {type(self.out).__name__}")
        self.out = Path(self.out)
        for name in ("epochs", "max_steps"):  # 0 is "nothing to train", said by the Trainer
            if getattr(self, name) is not None:
                setattr(self, name, whole_number(name, getattr(self, name)))
        self.checkpoint_every = whole_number("checkpoint_every", self.checkpoint_every, 1)
        self.log_every = whole_number("log_every", self.log_every, 1)
        self.seed = whole_number("seed", self.seed)
        check_dataset_name(self.dataset)
        for name in ("resume", "overwrite", "skip_nonfinite", "progress", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.loggers, str) or not all(isinstance(x, str) for x in self.loggers):
            raise ConfigError(f"loggers must be a sequence of names, got {self.loggers!r}")
        self.loggers = tuple(self.loggers)


@dataclass
class TrainResult:
    """What a finished (or interrupted) run reports."""

    step: int
    epoch: int
    seconds: float
    images_per_second: float
    last_metrics: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    resumed_from: int | None = None
    world_size: int = 1


class TrainingInterrupted(TrainingError):
    """Raised after SIGINT/SIGTERM once the checkpoint is safely written."""
