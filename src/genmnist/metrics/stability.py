"""Training stability and training time, read from a run's ``metrics.jsonl``.

The trainer appends one JSON record per logging interval, ``{"step", "loss", ...,
"time"}`` (see :mod:`genmnist.training`; `read_metrics` reads it, from
`genmnist.run_folder`); these functions need nothing else.
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Any

from genmnist.run_folder import METRICS_FILE, read_metrics

__all__ = ["METRICS_FILE", "loss_key", "read_metrics", "training_stability", "training_time"]


def loss_key(records: list[dict[str, Any]]) -> str | None:
    """The loss to judge a run by: ``loss``, else the first key ending in ``loss``
    (``generator_loss`` for a GAN)."""
    keys = [k for r in records for k, v in r.items() if isinstance(v, int | float)]
    for preferred in ("loss", "generator_loss"):
        if preferred in keys:
            return preferred
    return next((k for k in keys if k.endswith("loss")), None)


def _median_smooth(values: list[float], window: int) -> list[float]:
    half = window // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def training_time(records: list[dict[str, Any]]) -> float | None:
    """Seconds spent training, summed over resumed segments (their clocks restart)."""
    times = [
        float(t)
        for r in records
        if isinstance(t := r.get("time"), int | float) and math.isfinite(t) and t >= 0
    ]
    if not times:
        return None
    total, segment_max, previous = 0.0, 0.0, -math.inf
    for t in times:
        if t < previous:  # a resumed run restarts its clock
            total += segment_max
            segment_max = 0.0
        segment_max, previous = max(segment_max, t), t
    return total + segment_max


def training_stability(
    run: str | os.PathLike[str] | list[dict[str, Any]],
    key: str | None = None,
    tail: float = 0.2,
    tolerance: float = 0.05,
) -> dict[str, Any]:
    """Summarise how a run trained.

    Args:
        run: A run folder, a ``metrics.jsonl`` file, or its records.
        key: Loss to analyse (default: see :func:`loss_key`).
        tail: Fraction of the records (the last part of training) used for the variance.
        tolerance: A run has converged once its median-smoothed loss stays within this
            fraction of the total improvement from the final level.

    Returns:
        ``loss_key``; ``final_loss`` (mean over the tail); ``loss_std_tail`` and
        ``loss_cv_tail`` (standard deviation over the tail, and it divided by
        ``|final_loss|``: lower is steadier); ``steps_to_converge`` (first logged step
        after which the smoothed loss stays within ``tolerance`` of the total improvement
        from its final level; None when there are too few records); ``total_steps`` and
        ``training_seconds``.
    """
    records = run if isinstance(run, list) else read_metrics(run)
    key = key or loss_key(records)
    points = [
        (float(r["step"]), float(r[key]))
        for r in records
        if key is not None and isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    result: dict[str, Any] = {
        "loss_key": key,
        "final_loss": None,
        "loss_std_tail": None,
        "loss_cv_tail": None,
        "steps_to_converge": None,
        "total_steps": int(max((float(r["step"]) for r in records), default=0)),
        "training_seconds": training_time(records),
    }
    if not points:
        return result
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    n_tail = max(2, math.ceil(tail * len(values))) if len(values) >= 2 else 1
    last = values[-n_tail:]
    final = statistics.fmean(last)
    std = statistics.pstdev(last) if len(last) > 1 else 0.0
    result.update(
        final_loss=final,
        loss_std_tail=std,
        loss_cv_tail=std / abs(final) if final != 0 else None,
    )
    if len(values) >= 5:
        smooth = _median_smooth(values, 5)
        start = smooth[0]
        band = tolerance * abs(start - final) + 1e-12
        converged_at = steps[-1]
        for i in range(len(smooth) - 1, -1, -1):
            if abs(smooth[i] - final) > band:
                break
            converged_at = steps[i]
        result["steps_to_converge"] = int(converged_at)
    return result
