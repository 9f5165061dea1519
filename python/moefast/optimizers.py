"""Placement optimizers: the product's greedy, the exact MILP and the engines' baselines."""

from __future__ import annotations

import warnings
from typing import Any

from moefast import _core
from moefast._core import Placement, SubsetTable
from moefast.validation import check_int, check_positive, check_seed

#: Largest number of GPUs a placement spans (the core's limit).
MAX_GPUS = 1024

#: "greedy" is moefast's best effort; "milp" is exact (small layers); the rest are the
#: placements inference engines use today.
METHODS = ("greedy", "milp", "contiguous", "round_robin", "eplb")


class NotProvenOptimalWarning(UserWarning):
    """The MILP stopped at its time limit before proving its placement optimal."""


def check_memory(num_experts: int, num_gpus: int, slots_per_gpu: int) -> None:
    num_gpus = check_int("num_gpus", num_gpus, 1, MAX_GPUS)
    slots_per_gpu = check_int("slots_per_gpu", slots_per_gpu, 1)
    if num_gpus * slots_per_gpu < num_experts:
        raise ValueError(
            f"{num_gpus} GPUs x {slots_per_gpu} slots = {num_gpus * slots_per_gpu} slots cannot hold"
            f" {num_experts} experts"
        )
    if slots_per_gpu > num_experts:
        raise ValueError(
            f"slots_per_gpu = {slots_per_gpu} is more than the {num_experts} experts: a GPU holds"
            " each expert at most once"
        )


def optimize(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    method: str = "greedy",
    seed: int = 0,
    time_limit: float | None = None,
    **batch: Any,
) -> Placement:
    """A placement of `table`'s experts on `num_gpus` GPUs of `slots_per_gpu` slots each.

    Every expert gets at least one replica and every slot is filled with distinct experts
    (an extra replica never raises the cost). The same seed gives the same placement.
    `time_limit` (seconds) bounds the MILP; if it stops before proving optimality it
    warns with NotProvenOptimalWarning. Keyword arguments `objective="batch"`,
    `batch_size` and `cost_model` optimize the mean step time of batches instead
    (see moefast.batch).
    """
    if not isinstance(table, SubsetTable):
        raise TypeError(f"table must be a SubsetTable, got {type(table).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    check_memory(table.num_experts, num_gpus, slots_per_gpu)
    num_gpus, slots_per_gpu = int(num_gpus), int(slots_per_gpu)
    # Checked for every method, so that "milp" (which has no use for it) refuses what the others do.
    seed = check_seed("seed", seed)
    if time_limit is not None:
        # HiGHS ignores an invalid limit and would run without one.
        time_limit = check_positive("time_limit", time_limit)
    objective = batch.pop("objective", "decode")
    if objective == "batch":
        return _optimize_for_batches(table, num_gpus, slots_per_gpu, method, seed, **batch)
    if objective != "decode" or batch:
        raise ValueError(
            f"unknown options {sorted(batch) or [objective]}: objective is 'decode' or 'batch'"
        )
    if method == "milp":
        from moefast.milp import solve_milp

        result = solve_milp(table, num_gpus, slots_per_gpu, time_limit=time_limit)
        if not result.optimal:
            warnings.warn(
                f"the MILP stopped at its {time_limit} s time limit: cost {result.cost:.4f},"
                f" proven lower bound {result.bound:.4f}; the placement is not proven optimal",
                NotProvenOptimalWarning,
                stacklevel=2,
            )
        return result.placement
    return _core.optimize_placement(table, num_gpus, slots_per_gpu, method, seed)


def _optimize_for_batches(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    method: str,
    seed: int,
    batch_size: int | None = None,
    cost_model: Any = None,
    **search: Any,
) -> Placement:
    """Lowest mean step time at `batch_size`: a local search on sampled batches
    (moefast.batch.optimize_batch) from the better of the greedy and EPLB placements
    (or from `method`'s placement when another method is named)."""
    from moefast.batch import optimize_batch, simulate

    if batch_size is None or cost_model is None:
        raise ValueError("objective='batch' needs batch_size and cost_model")
    starts = ("greedy", "eplb") if method == "greedy" else (method,)
    candidates = [optimize(table, num_gpus, slots_per_gpu, method=m, seed=seed) for m in starts]

    def mean_step(placement: Placement) -> float:
        return simulate(table, placement, [batch_size], cost_model, seed=seed, steps=256)[0][
            "mean_step_time"
        ]

    start = min(candidates, key=mean_step) if len(candidates) > 1 else candidates[0]
    return optimize_batch(table, start, slots_per_gpu, cost_model, batch_size, seed=seed, **search)
