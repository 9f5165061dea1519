"""Placement optimizers: the product's greedy, the exact MILP and the engines' baselines."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from moefast import _core
from moefast._core import MAX_GPUS, Placement, SubsetTable

#: The core's methods ("greedy", moefast's best effort, and the placements inference
#: engines use today) and "milp", exact for small layers (HiGHS, in Python).
METHODS = (*_core.METHODS, "milp")


class NotProvenOptimalWarning(UserWarning):
    """The MILP stopped at its time limit before proving its placement optimal."""


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high]; numpy ints count, bools and floats do not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")
    return value


def check_memory(num_experts: int, num_gpus: int, slots_per_gpu: int) -> None:
    """The core's feasibility check (`_core.check_memory`) after the integer checks."""
    num_gpus = check_int("num_gpus", num_gpus, 1, MAX_GPUS)
    slots_per_gpu = check_int("slots_per_gpu", slots_per_gpu, 1)
    _core.check_memory(num_experts, num_gpus, slots_per_gpu)


def optimize(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    method: str = "greedy",
    seed: int = 0,
    time_limit: float | None = None,
    time_budget: float | None = None,
    work_budget: int | None = None,
    **batch: Any,
) -> Placement:
    """A placement of `table`'s experts on `num_gpus` GPUs of `slots_per_gpu` slots each.

    Every expert gets at least one replica and every slot is filled with distinct experts
    (an extra replica never raises the cost). The same seed gives the same placement.
    `time_limit` (seconds) bounds the MILP; if it stops before proving optimality it
    warns with NotProvenOptimalWarning. `time_budget` (seconds) and `work_budget` (rows
    read by the greedy's exact evaluations) stop the greedy's searches early and return
    the best placement found: the result for a work budget is deterministic (same seed,
    same placement on any machine), the one for a time budget is not. A complete
    placement is always built first (about a quarter of an unbudgeted run on a
    DeepSeek-V3-size layer), so a very small budget can be exceeded. Keyword arguments
    `objective="batch"`,
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
    seed = check_int("seed", seed, 0, 2**63 - 1)
    if time_limit is not None:
        if isinstance(time_limit, bool) or not isinstance(
            time_limit, (int, float, np.integer, np.floating)
        ):
            raise TypeError(
                f"time_limit must be a number of seconds, got {type(time_limit).__name__}"
            )
        if not 0 < time_limit < float("inf"):
            # HiGHS ignores an invalid limit and would run without one.
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
    time_budget, work_budget = check_budgets(time_budget, work_budget)
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
    return _core.optimize_placement(
        table, num_gpus, slots_per_gpu, method, seed, time_budget, work_budget
    )


def check_budgets(
    time_budget: float | None, work_budget: int | None
) -> tuple[float | None, int | None]:
    """`time_budget` as a float of seconds >= 0 and `work_budget` as an int >= 0 (or None)."""
    if time_budget is not None:
        if isinstance(time_budget, bool) or not isinstance(
            time_budget, (int, float, np.integer, np.floating)
        ):
            raise TypeError(
                f"time_budget must be a number of seconds, got {type(time_budget).__name__}"
            )
        if not 0 <= time_budget < float("inf"):
            raise ValueError(
                f"time_budget must be a finite number of seconds >= 0, got {time_budget}"
            )
        time_budget = float(time_budget)
    if work_budget is not None:
        work_budget = check_int("work_budget", work_budget, 0, 2**63 - 1)
    return time_budget, work_budget


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
