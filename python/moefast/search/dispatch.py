"""Placements searched for the dispatch an engine runs (docs/cost-model.md#dispatch): the
candidate that costs least under the engine's rule, then swaps of two experts between GPUs
kept while the rule's cost falls. The rule's map changes with the placement (SGLang's
static map is redrawn for every placement), so every move is scored with the map it
gives, transcribed in `moefast.io.engines.dispatch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from moefast._core import Placement, SubsetTable, dispatch_costs, subset_costs
from moefast._util.checks import check_count, check_seed
from moefast.batch.cost_model import CostModel
from moefast.batch.times import mean_step_time
from moefast.io.engines.dispatch import check_dispatch, dispatch_maps

#: Simulated steps behind a batch score of the search.
SEARCH_STEPS = 128


def dispatch_cost(table: SubsetTable, placement: Placement, dispatch: str, seed: int = 0) -> float:
    """Expected cost (expert rounds per token) of ``table`` under ``dispatch``."""
    if check_dispatch(dispatch) == "best":
        costs = subset_costs(table, placement).astype(np.float64)
    else:
        (m,) = dispatch_maps([placement], dispatch)
        costs = dispatch_costs(table, placement, m, seed)
    return float(np.dot(costs, table.weights) / table.weights.sum())


@dataclass(frozen=True)
class DispatchSearch:
    """The placement chosen for a dispatch: the candidate it started from, its cost and the
    cost after the swaps (expert rounds per token on the table searched at batch size 1,
    else mean step time in the cost model's unit), swaps kept."""

    placement: Placement
    start: str
    start_cost: float
    cost: float
    swaps: int


def search_for_dispatch(
    table: SubsetTable,
    candidates: Mapping[str, Placement],
    dispatch: str,
    *,
    max_evaluations: int = 200,
    seed: int = 0,
    batch_size: int = 1,
    cost_model: CostModel | None = None,
) -> DispatchSearch:
    """The candidate of least cost under ``dispatch`` on ``table``, improved by up to
    ``max_evaluations`` random swaps of two experts on two GPUs (slot counts unchanged),
    each kept when it lowers that cost. The cost is expert rounds per token at
    ``batch_size`` 1, else the mean step time of `SEARCH_STEPS` simulated steps of that
    many tokens under ``cost_model`` (the same steps for every placement). Deterministic
    for a given seed."""
    dispatch = check_dispatch(dispatch)
    max_evaluations = check_count("max_evaluations", max_evaluations, low=0)
    seed = check_seed("seed", seed)
    batch_size = check_count("batch_size", batch_size)
    if not candidates:
        raise ValueError("at least one candidate placement is needed")
    if batch_size > 1 and cost_model is None:
        raise ValueError("a batch size above 1 needs a cost_model to time the steps")

    def cost_of(placement: Placement) -> float:
        if batch_size == 1:
            return dispatch_cost(table, placement, dispatch)
        assert cost_model is not None
        return mean_step_time(
            table,
            placement,
            cost_model,
            batch_size,
            seed=seed,
            steps=SEARCH_STEPS,
            dispatch=dispatch,
        )

    scored = {name: cost_of(p) for name, p in candidates.items()}
    start = min(scored, key=lambda name: scored[name])
    best = candidates[start]
    best_cost = scored[start]
    replicas = best.replicas.copy()
    rng = np.random.default_rng(seed)
    kept = 0
    for _ in range(max_evaluations):
        move = _random_swap(replicas, rng)
        if move is None:
            break
        e1, g1, e2, g2 = move
        trial = replicas.copy()
        trial[e1, g1], trial[e1, g2] = False, True
        trial[e2, g2], trial[e2, g1] = False, True
        placement = Placement(trial)
        cost = cost_of(placement)
        if cost < best_cost - 1e-12:
            replicas, best, best_cost = trial, placement, cost
            kept += 1
    return DispatchSearch(best, start, scored[start], best_cost, kept)


def _random_swap(
    replicas: np.ndarray, rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """(e1, g1, e2, g2): expert e1 leaves GPU g1 for g2 and e2 the other way, each landing on
    a GPU that lacks it; None when no such pair turns up in a few tries."""
    held = np.argwhere(replicas)
    for _ in range(64):
        (e1, g1), (e2, g2) = held[rng.integers(len(held), size=2)]
        if g1 != g2 and not replicas[e1, g2] and not replicas[e2, g1]:
            return int(e1), int(g1), int(e2), int(g2)
    return None
