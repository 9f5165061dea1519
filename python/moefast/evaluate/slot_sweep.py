"""How expected cost falls as GPUs get more memory: the default slot count and the sweep."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from moefast._core import SubsetTable, expected_cost, lower_bound
from moefast._util.progress import progress
from moefast.evaluate.comparison import BASELINES
from moefast.search.methods import optimize


def default_slots(num_experts: int, num_gpus: int) -> int:
    """A quarter more memory than one copy of every expert needs: room for hot replicas."""
    return math.ceil(1.25 * num_experts / num_gpus)


def slot_sweep(
    tables: Sequence[SubsetTable],
    num_gpus: int,
    methods: Sequence[str] = ("greedy", *BASELINES),
    points: int = 8,
    coverage: float = 1.0,
    seed: int = 0,
    score_tables: Sequence[SubsetTable] | None = None,
    include: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Mean expected cost per layer against slots per GPU, from one copy of every expert
    (ceil(E/G)) to every GPU holding every expert (E). Placements are optimized on the subsets
    of ``tables`` covering ``coverage`` of the tokens and scored on ``score_tables`` (held-out
    tokens; default: the full ``tables``, in-sample); ``include`` (a plan's slots per GPU)
    is swept too when it lies in that range. Returns (slots [n], method -> cost [n],
    lower bound [n])."""
    num_experts = tables[0].num_experts
    scored = list(tables if score_tables is None else score_tables)
    low, high = math.ceil(num_experts / num_gpus), num_experts
    slots = np.unique(np.linspace(low, high, min(points, high - low + 1)).round().astype(int))
    if include is not None and low <= include <= high:
        slots = np.union1d(slots, [include])
    costs = {m: np.zeros(len(slots)) for m in methods}
    work = [(i, s, m) for i, s in enumerate(slots) for m in methods]
    planned = tables if coverage >= 1 else [t.prune(coverage=coverage) for t in tables]
    for i, s, m in progress(work, len(work), "slot sweep"):
        costs[m][i] = np.mean(
            [
                expected_cost(t, optimize(p, num_gpus, int(s), method=m, seed=seed))
                for t, p in zip(scored, planned, strict=True)
            ]
        )
    bound = np.array([np.mean([lower_bound(t, num_gpus, int(s)) for t in scored]) for s in slots])
    return slots, costs, bound
