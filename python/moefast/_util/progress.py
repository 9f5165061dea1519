"""Progress bars for long work: shown on a terminal, silent in logs and pipes."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """A tqdm bar over ``iterable`` when stderr is a terminal, the bare iterable otherwise."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)
