"""Cost of a model: parameters, sampling speed, peak memory while sampling.

Peak memory is measured with ``torch.cuda.max_memory_allocated`` on a GPU. On the CPU,
where PyTorch keeps no allocator statistics, it is the growth of the process's resident
memory (polled every few milliseconds from ``/proc/self/statm`` during sampling, so it
includes everything the sampling call allocates); where ``/proc`` is missing it falls
back to the growth of ``resource.getrusage``'s peak, which can read 0 if the process had
already used more memory before.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int | None:
    try:
        import resource
        import sys
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, float, int | None]:
    """Run ``fn()``; return ``(result, seconds, peak extra memory in bytes or None)``."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return result, seconds, torch.cuda.max_memory_allocated(device) - before
    base = _rss_bytes()
    if base is None:
        base_peak = _maxrss_bytes()
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        after = _maxrss_bytes()
        grown = None if base_peak is None or after is None else max(0, after - base_peak)
        return result, seconds, grown
    peak = [base]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > peak[0]:
                peak[0] = rss
            done.wait(0.002)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
    rss = _rss_bytes()
    if rss is not None:
        peak[0] = max(peak[0], rss)
    return result, seconds, peak[0] - base


def model_size(model: torch.nn.Module) -> dict[str, Any]:
    """``parameters`` (trainable), ``weights_mb`` (parameters and buffers, MB) and
    ``weights_sha256`` (see `weights_fingerprint`)."""
    tensors = [*model.parameters(), *model.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "parameters": trainable,
        "weights_mb": size / 2**20,
        "weights_sha256": weights_fingerprint(model),
    }


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of a model's config (its sampling defaults included) and state:
    names, shapes, dtypes and bytes, in name order. Two models with the same fingerprint
    sample identically; `genmnist compare --results` uses it to reuse `genmnist eval`
    output only for the same model."""
    import hashlib
    import json

    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
