"""One call per item on a thread per core, for work the compiled core does without the GIL."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def per_core(work: Callable[[_Item], _Result], items: Sequence[_Item]) -> list[_Result]:
    """``work`` of every item, in order, on at most one thread per core (in this thread
    where there is one item or one core)."""
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(work, items))
