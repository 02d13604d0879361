"""Argument checks shared by the media modules; they raise ValueError naming the argument."""

from __future__ import annotations

import math
from typing import Any


def check_limit(name: str, value: float, *, integer: bool = False) -> None:
    """`value` must be a positive finite number (an int, not a bool, if `integer`)."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_int_range(name: str, value: Any, low: int, high: int) -> None:
    """`value` must be an int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
