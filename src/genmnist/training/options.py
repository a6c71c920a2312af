"""What a training run is asked to do (`TrainOptions`) and what it reports (`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from genmnist.errors import TrainingError


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
