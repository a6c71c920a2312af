"""Where a training run reports: progress lines and the progress bar (rank 0 only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TrainingConsole:
    """Progress lines and a rich progress bar on stderr, from rank 0 only.

    Args:
        rank: This process's rank; only rank 0 speaks.
        log: Where lines go (default: a rich console on stderr).
        progress: Show a progress bar (rich hides it when stderr is not a terminal).
    """

    def __init__(
        self, rank: int, log: Callable[[str], None] | None = None, progress: bool = True
    ) -> None:
        self.rank = rank
        self.show_progress = progress
        self._sink = log or self._print
        self._console: Any = None
        self._bar: Any = None
        self._task: Any = None

    def log(self, message: str) -> None:
        """Report a line of progress (only rank 0 speaks when training with torchrun)."""
        if self.rank == 0:
            self._sink(message)

    def _rich(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def _print(self, message: str) -> None:
        self._rich().print(message)

    def progress(self, total: int, completed: int):
        """A context manager showing the bar from ``completed`` to ``total`` steps;
        `advance` and `show` update it."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._rich(),
            disable=not self.show_progress or self.rank != 0,
        )
        self._task = self._bar.add_task("train", total=total, completed=completed, info="")
        return self._bar

    def advance(self, step: int) -> None:
        """Move the bar to ``step``."""
        self._bar.update(self._task, completed=step)

    def show(self, metrics: dict[str, float], images_per_second: float) -> None:
        """Show the first few logged numbers and the speed beside the bar."""
        info = " ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:3])
        self._bar.update(self._task, info=f"{info} | {images_per_second:,.0f} img/s")
