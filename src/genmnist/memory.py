"""How much memory a request would take, checked before anything is allocated.

A number from the command line or a config file (``-n``, a layer width) can ask for more
memory than the machine has; without a check the process is killed or ends in a bare
``MemoryError`` after minutes of work. `check_fits` refuses such requests up front with a
one-line `ConfigError` that says how much was asked for and how much there is.
"""

from __future__ import annotations

import os

from genmnist.errors import ConfigError

#: Share of the available memory one request may take (the rest is for the process).
SHARE = 0.8


def available_bytes() -> int | None:
    """Memory the process could still allocate: ``MemAvailable`` of ``/proc/meminfo``,
    else the free physical pages (``os.sysconf``); None when neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def human(nbytes: float) -> str:
    """``nbytes`` in a few characters: ``3.2 GB``, ``512.0 MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    return f"{nbytes:.1f} PB"  # pragma: no cover


def check_fits(nbytes: float, what: str, hint: str) -> None:
    """Raise `ConfigError` if ``nbytes`` exceed `SHARE` of the available memory.

    Args:
        nbytes: Estimated size of the allocation.
        what: What would be allocated, e.g. ``"holding 10,000,000 samples"``.
        hint: What to do instead, e.g. ``"draw fewer (-n)"``.
    """
    available = available_bytes()
    if available is None or nbytes <= SHARE * available:
        return
    raise ConfigError(
        f"{what} needs about {human(nbytes)} of memory, more than the {human(available)} "
        f"available; {hint}"
    )
