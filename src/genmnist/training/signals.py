"""Graceful stop: SIGINT/SIGTERM finish the step, checkpoint, then stop the run."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class StopRequest:
    """Whether the run was asked to stop; `handling` routes SIGINT/SIGTERM here."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        """A stop was asked for."""
        return self.signal is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask the run to stop after the current step (what SIGINT/SIGTERM do)."""
        self.signal = signum

    @contextmanager
    def handling(self):
        """While inside, the first SIGINT/SIGTERM requests a stop and a second one stops
        hard (KeyboardInterrupt). Signals can only be handled in the main thread; elsewhere
        this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.signal is not None:  # second Ctrl-C: stop hard
                raise KeyboardInterrupt
            self.signal = signum

        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, handler) for s in handled}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
