"""Bounds on arguments that reach the C++ core unchecked otherwise.

``MAX_THREADS``: the most threads one call may ask for. OpenMP tries to start any team size it is
given, and a huge one (``threads=100000``, from an argument or a tampered saved file) crashed the
process at the first predict. The C++ core rejects larger counts too (``_core.MAX_THREADS``).
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np

MAX_THREADS = 1024


def check_threads(value: Any, name: str = "threads") -> int:
    """``value`` as an int in [0, MAX_THREADS] (0 = all cores, capped at MAX_THREADS).

    Accepts Python and numpy integers; raises ValueError naming ``name`` and the value for bools,
    non-integers (floats included, even 2.0), negative counts and counts above MAX_THREADS.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"{name} must be an integer in [0, {MAX_THREADS}] (0 = all cores), got {value!r}")
    count = int(value)
    if not 0 <= count <= MAX_THREADS:
        raise ValueError(f"{name} must be in [0, {MAX_THREADS}] (0 = all cores), got {value!r}")
    return count


def check_int(value: Any, name: str, lo: int, hi: Optional[int] = None, *, optional: bool = False) -> Optional[int]:
    """`value` as an int in [lo, hi] (ValueError naming the parameter otherwise)."""
    if value is None and optional:
        return None
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not integer or value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an integer {bounds}{' or None' if optional else ''}, got {value!r}")
    return int(value)
