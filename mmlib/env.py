"""Settings read from environment variables, checked where they are read."""

from __future__ import annotations

import math
import os

from mmlib.errors import MMLibError


def positive_number(name: str, default: float, unit: str) -> float:
    """$`name` as a finite number > 0, else `default` when unset or empty; anything else is an
    MMLibError naming the variable, its unit and the value given."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise MMLibError(f"{name} must be a positive number of {unit}, got {text!r}")
    return value
