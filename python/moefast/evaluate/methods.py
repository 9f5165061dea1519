"""Every method planned on the same tables and scored on them, beside the baselines: the
comparison a plan without held-out tokens reports (in-sample)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moefast._core import Placement, SubsetTable, expected_cost, lower_bound
from moefast._util.progress import progress
from moefast.evaluate.comparison import BASELINES, Comparison
from moefast.search.methods import optimize


def compare_methods(
    tables: Sequence[SubsetTable],
    layer_ids: Sequence[int],
    num_gpus: int,
    slots_per_gpu: int,
    main: dict[str, Sequence[Placement]] | None = None,
    methods: Sequence[str] = BASELINES,
    seed: int = 0,
    plan_tables: Sequence[SubsetTable] | None = None,
    basis: str = "in-sample",
    note: str = "",
) -> Comparison:
    """Cost of every layer under the baselines and given placements (``main``), scored on
    ``tables``. Baselines are computed on ``plan_tables`` (default: ``tables``); pass the
    train part there and the test part as ``tables`` for held-out costs, with
    ``basis="held-out"``."""
    planned = list(tables if plan_tables is None else plan_tables)
    placed: dict[str, list[Placement]] = {m: list(p) for m, p in (main or {}).items()}
    for method in methods:
        if method in placed:
            continue
        placed[method] = [
            optimize(t, num_gpus, slots_per_gpu, method=method, seed=seed)
            for t in progress(planned, len(planned), method)
        ]
    costs = {
        m: np.array([expected_cost(t, p) for t, p in zip(tables, ps, strict=True)])
        for m, ps in placed.items()
    }
    # The collision bound of each scored table: no placement with these slots costs less.
    bounds = np.array([lower_bound(t, num_gpus, slots_per_gpu) for t in tables])
    main_method = next(iter(main)) if main else methods[0]
    return Comparison(list(layer_ids), costs, bounds, main_method, placed, basis, note)
