"""Checks of public arguments, one definition each, with messages that name the argument.

Integers are exact: Python and numpy ints pass, bools and floats are refused (2.7 is not
silently truncated to 2, True is not 1). Numbers are real: ints and floats of Python or
numpy, not bools. The core takes 64-bit integers, so values outside that range are a
ValueError here rather than an OverflowError at the boundary.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

from moefast._core import Placement

#: Largest value of the core's signed 64-bit integer arguments (seeds, counts).
INT64_MAX = 2**63 - 1

#: Layer ids are the model's layer numbers, in [0, MAX_LAYERS). Bounded so that a small
#: file naming layer 50,000,000 cannot make a writer lay out 50 million rows.
MAX_LAYERS = 10_000


def check_placement(value: Any, name: str = "placement") -> Placement:
    """`value` itself, if it is a `moefast.Placement`; TypeError naming `name` if not."""
    if not isinstance(value, Placement):
        raise TypeError(f"{name} must be a moefast.Placement, got {type(value).__name__}")
    return value


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; numpy ints count, bools and floats do not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")
    return value


def check_count(name: str, value: Any, low: int = 1) -> int:
    """A count (tokens, steps, batches, ...): an int in [low, INT64_MAX], low = 1 by default."""
    return check_int(name, value, low, INT64_MAX)


def check_seed(name: str, value: Any) -> int:
    """A random seed: an int in [0, INT64_MAX]."""
    return check_int(name, value, 0, INT64_MAX)


def check_ints(name: str, values: Any, low: int | None = None) -> list[int]:
    """One int or a non-empty sequence (or array) of them, each at least ``low``, as a list."""
    seq = [values] if np.ndim(values) == 0 else list(np.asarray(values, dtype=object).ravel())
    if not seq:
        raise ValueError(f"{name} is empty")
    out = []
    for v in seq:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must hold ints, got {v!r}")
        v = int(v)
        if not -(2**63) <= v <= INT64_MAX:
            raise ValueError(f"{name} = {v} is out of range")
        if low is not None and v < low:
            raise ValueError(f"{name} must be at least {low}, got {v}")
        out.append(v)
    return out


def check_layer_ids(values: Any, name: str = "layer_ids") -> list[int]:
    """Model layer numbers as a list of ints in [0, MAX_LAYERS); 2.7 or "a" are refused,
    not truncated."""
    out = []
    for x in values:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise TypeError(f"{name} must hold ints, got {x!r}")
        if not 0 <= x < MAX_LAYERS:
            raise ValueError(f"{name} holds layer {int(x)}, out of range [0, {MAX_LAYERS})")
        out.append(int(x))
    return out


def check_field_int(
    where: object, name: str, value: Any, low: int | None = None, high: int | None = None
) -> int:
    """An integer field of a file (``where`` names the file, and line): ValueError naming
    both for anything but an int in [low, high] (a bool, 2.5, "2", 1e30, 2**70...)."""
    try:
        return check_int(name, value, low, high)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def check_number(name: str, value: Any) -> float:
    """A real number (int or float, Python or numpy; not a bool) as a float; may be inf or NaN."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float range: a ValueError like every bad value
        raise ValueError(f"{name} = {value} is out of range") from None


def check_non_negative(name: str, value: Any) -> float:
    """A finite real number >= 0, as a float."""
    number = check_number(name, value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be finite and non-negative, got {value}")
    return number


def check_positive(name: str, value: Any) -> float:
    """A finite real number > 0, as a float."""
    number = check_number(name, value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return number
