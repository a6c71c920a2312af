"""What counts as a number in a config or a record: one test for every checker."""

from __future__ import annotations

import math
from typing import Any


def is_number(value: Any, whole: bool = False) -> bool:
    """An int (not a bool) or, unless ``whole``, a finite float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return not whole and isinstance(value, float) and math.isfinite(value)
