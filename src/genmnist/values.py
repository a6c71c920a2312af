"""What counts as a number in a config or a record: one test for every checker."""

from __future__ import annotations

import math
import operator
from typing import Any

from genmnist.errors import ConfigError


def is_number(value: Any, whole: bool = False) -> bool:
    """An int (not a bool) or, unless ``whole``, a finite float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return not whole and isinstance(value, float) and math.isfinite(value)


def whole_number(what: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int if it is a whole number (an int, a NumPy or 0-d torch integer;
    not a bool, a float or a string) of at least ``minimum``, else `ConfigError` naming
    ``what``: the check of counts and seeds given to functions, where a float or a string
    would otherwise fail deep inside PyTorch, or be truncated without a word."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None:
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{what} must be {kind}, got {number}")
    return number


def whole_labels(labels: Any, problem: str):
    """``labels`` (a number, a sequence, an array or a tensor) as a flat int64 tensor, or
    ``ConfigError(problem)`` if they are not whole numbers: bools, strings, NaN and 2.5
    are refused; 3.0 is the label 3 (never truncated)."""
    import torch

    try:
        tensor = torch.as_tensor(labels).flatten()
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise ConfigError(problem) from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ConfigError(problem)
    if tensor.is_floating_point() and not bool(
        (torch.isfinite(tensor) & (tensor == tensor.round())).all()
    ):
        raise ConfigError(problem)
    return tensor.long()
