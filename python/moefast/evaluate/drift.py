"""Drift: how a fixed placement fares on consecutive windows of a trace, beside re-planning.

For each of N consecutive windows: the cost of the fixed placement, the cost of a placement
re-planned on the previous window (held-out: what re-planning every window would really
give), and of one re-planned on the window itself (in-sample: the best re-planning could
hope for). When the fixed placement falls behind the held-out re-plan, re-planning pays.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from moefast._core import expected_cost
from moefast._util.checks import check_int
from moefast.placement import ModelPlacement
from moefast.search.methods import optimize
from moefast.trace import Trace


@dataclass
class Window:
    """Model expected cost (sum over layers, expert rounds per token) on one window."""

    first_token: int
    tokens: int
    fixed: float
    replanned_previous: float | None  # held-out: planned on the window before
    replanned_here: float  # in-sample: planned on this window


def _window(
    trace: Trace,
    model: ModelPlacement,
    fixed: list,
    previous: list | None,
    start: int,
    stop: int,
    method: str,
    coverage: float,
    seed: int,
) -> tuple[Window, list]:
    """One window's costs, and the placements re-planned on it."""
    tables = trace.select_tokens(slice(start, stop)).tables()
    here = [
        optimize(
            t.prune(coverage=coverage) if coverage < 1 else t,
            model.num_gpus,
            model.slots_per_gpu,
            method=method,
            seed=seed,
        )
        for t in tables
    ]

    def cost(placements: list) -> float:
        return float(sum(expected_cost(t, p) for t, p in zip(tables, placements, strict=True)))

    window = Window(
        start, stop - start, cost(fixed), None if previous is None else cost(previous), cost(here)
    )
    return window, here


def drift_windows(
    trace: Trace,
    model: ModelPlacement,
    windows: int,
    method: str = "greedy",
    coverage: float = 0.99,
    seed: int = 0,
) -> list[Window]:
    """The fixed ``model`` and re-planned placements on ``windows`` consecutive windows."""
    windows = check_int("windows", windows)
    if not 1 <= windows <= trace.num_tokens:
        raise ValueError(f"windows must be in [1, tokens = {trace.num_tokens}], got {windows}")
    fixed = model.placements_for(trace.layer_ids)
    bounds = np.linspace(0, trace.num_tokens, windows + 1).round().astype(int)
    out: list[Window] = []
    previous = None
    for i, (start, stop) in enumerate(pairwise(bounds)):
        try:
            window, here = _window(
                trace, model, fixed, previous, int(start), int(stop), method, coverage, seed
            )
        except ValueError as err:
            raise ValueError(
                f"window {i + 1} of {windows} (tokens {start} to {stop - 1}): {err}"
            ) from err
        out.append(window)
        previous = here
    return out
