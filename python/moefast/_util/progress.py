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


def stage(text: str, shown: bool) -> None:
    """One line on stderr saying what long work starts (``shown``: the caller asked for
    progress), on a terminal and in pipes alike: the first sign of life comes at once."""
    if shown:
        print(text, file=sys.stderr, flush=True)


def steps(iterable: Iterable[T], total: int, desc: str, shown: bool) -> Iterable[T]:
    """Progress of long work the caller asked to see (``shown``): a tqdm bar on a terminal,
    one line per item on stderr otherwise (logs and pipes), after a first line of 0 done
    when the work starts; nothing when not ``shown``."""
    if not shown:
        yield from iterable
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, leave=False)
        return
    print(f"{desc}: 0/{total}", file=sys.stderr, flush=True)
    for done, item in enumerate(iterable, 1):
        yield item
        print(f"{desc}: {done}/{total}", file=sys.stderr, flush=True)
