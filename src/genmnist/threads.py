"""How many threads PyTorch's CPU kernels use, chosen before torch starts.

PyTorch's OpenMP pool spins while it waits for work, one thread per core. On an idle
machine that is the fastest choice; when another process keeps a core busy, the spinning
threads fight it for that core and a short command such as ``genmnist sample ddpm -n 64``
takes much longer than it would on the cores that are free. `apply_thread_policy`, which
the command line calls before anything imports torch, looks at how many processes are
running right now and, when the machine is busy, gives torch only the free cores and
passive waiting. Settings the user made (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``) always
win, and an idle machine is left exactly as it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping

#: The environment variable that turns the policy off (any non-empty value but ``0``).
OPT_OUT = "GENMNIST_KEEP_THREADS"


def opted_out(environ: MutableMapping[str, str]) -> bool:
    """Whether ``environ`` turns the policy off (`OPT_OUT` set to anything but ``0``)."""
    return environ.get(OPT_OUT, "0") not in ("", "0")


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def other_running_processes(readings: int = 5, interval: float = 0.002) -> int | None:
    """How many other processes are running or ready to run (Linux ``/proc/loadavg``),
    the least of a few readings so a process that just ends is not counted; None where
    the system does not say."""
    least = None
    for i in range(readings):
        try:
            with open("/proc/loadavg", encoding="ascii") as file:
                running = int(file.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        others = max(0, running - 1)  # this process is one of them
        least = others if least is None else min(least, others)
        if least == 0:  # an idle machine: no need to wait for more readings
            return 0
        if i + 1 < readings:
            time.sleep(interval)
    return least


def thread_settings(
    cores: int, busy: int | None, environ: MutableMapping[str, str]
) -> dict[str, str]:
    """The environment variables to set for ``cores`` cores of which ``busy`` are taken
    by other processes: none on an idle machine, when the load is unknown or when the user
    chose for themselves; else the free cores (at least one) as ``OMP_NUM_THREADS`` and
    passive waiting."""
    if busy is None or busy == 0 or opted_out(environ):
        return {}
    settings = {}
    if "OMP_NUM_THREADS" not in environ:
        settings["OMP_NUM_THREADS"] = str(max(1, cores - busy))
    if "OMP_WAIT_POLICY" not in environ:
        settings["OMP_WAIT_POLICY"] = "PASSIVE"
    return settings


def apply_thread_policy(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the thread settings `thread_settings` chooses for this machine now, in
    ``environ`` (default: ``os.environ``), and return them. Has an effect only before
    torch is imported."""
    environ = os.environ if environ is None else environ
    if opted_out(environ):  # before reading the load, which takes a few milliseconds
        return {}
    settings = thread_settings(cpu_count(), other_running_processes(), environ)
    environ.update(settings)
    return settings
