"""`optimize`: one layer's placement by the method and objective asked for.

Decode methods: the product's greedy and the engines' baselines run in the core, the exact
MILP in `moefast.search.milp`. The batch objective (`moefast.search.batch`) improves the best
of those placements by a local search on sampled batches.
"""

from __future__ import annotations

from typing import Literal

import moefast._core as _core
from moefast._core import MAX_GPUS, Placement, SubsetTable
from moefast._util.checks import (
    check_count,
    check_int,
    check_non_negative,
    check_positive,
    check_seed,
)
from moefast.batch.cost_model import CostModel
from moefast.moves import (
    ROUND_US,
    CopyPrice,
    check_copy_cost,
    check_current,
    check_move_limits,
)
from moefast.search.batch import fastest_placement, optimize_batch
from moefast.search.milp import milp_placement
from moefast.search.node_plan import (
    node_aware_batch,
    node_aware_decode,
    replan_node_aware,
    replan_node_aware_batch,
)
from moefast.search.replan import check_replan_options, replan, replan_for_batches
from moefast.topology.groups import check
from moefast.topology.times import Topology

#: The core's methods ("greedy", moefast's best effort, and the placements inference
#: engines use today) and "milp", exact for small layers (HiGHS, in Python).
METHODS = (*_core.METHODS, "milp")

#: What `optimize` minimizes: the expected decode cost, or the mean step time of batches.
OBJECTIVES = ("decode", "batch")


def check_memory(num_experts: int, num_gpus: int, slots_per_gpu: int) -> None:
    """The core's feasibility check (`_core.check_memory`) after the integer checks."""
    num_gpus = check_int("num_gpus", num_gpus, 1, MAX_GPUS)
    slots_per_gpu = check_int("slots_per_gpu", slots_per_gpu, 1)
    _core.check_memory(num_experts, num_gpus, slots_per_gpu)


def optimize(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    *,
    method: str = "greedy",
    seed: int = 0,
    time_limit: float | None = None,
    objective: Literal["decode", "batch"] = "decode",
    batch_size: int | None = None,
    cost_model: CostModel | None = None,
    num_batches: int | None = None,
    max_evaluations: int = 40_000,
    time_budget: float | None = None,
    work_budget: int | None = None,
    topology: Topology | None = None,
    round_us: float = ROUND_US,
    current: Placement | None = None,
    max_moves: int | None = None,
    copy_cost: float | CopyPrice | None = None,
    num_groups: int | None = None,
) -> Placement:
    """A placement of `table`'s experts on `num_gpus` GPUs of `slots_per_gpu` slots each.

    Every expert gets at least one replica and every slot is filled with distinct experts
    (an extra replica never raises the cost). The same seed gives the same placement.
    `time_limit` (seconds) bounds the MILP; if it stops before proving optimality it
    warns with NotProvenOptimalWarning.

    `objective="decode"` minimizes the expected cost of one token (expert rounds).
    `objective="batch"` minimizes the mean step time of batches of `batch_size` tokens
    under `cost_model` (microseconds): a local search (`moefast.search.batch.optimize_batch`,
    which takes `num_batches` and `max_evaluations`) from the better of the greedy and
    EPLB placements, or from `method`'s placement when another method is named.

    `time_budget` (seconds) and `work_budget` (rows read by the greedy's exact
    evaluations) make the greedy anytime: a small budget stops its searches early, and
    what the greedy leaves of a larger one goes to an iterated local search from its
    placement (random moves, then swaps and reassignments on exact deltas, the best kept)
    until the budget is spent or 8 rounds in a row find nothing; the best placement found
    is returned. A work budget keeps the result deterministic (same seed, same placement
    on any machine), a time budget does not. A complete placement is always built first
    (about a sixth of an unbudgeted run on a DeepSeek-V3-size layer), so a very small
    budget can be exceeded. Without a budget the greedy's placement is returned as is.
    Baselines and the MILP ignore them.

    With `topology` (decode), the token time in us is minimized: round_us per expert round
    plus dispatch and combine between nodes (`moefast.search.node.place`, from `method`'s
    placement). With `topology` and `objective="batch"`, the layer time of batches with
    communication (`moefast.search.node.place_batch`, from the starts and the compute-only
    batch search's result). `num_groups` (with a topology) keeps each of `num_groups`
    groups of consecutive expert ids on one node, as DeepSeek-V3's group-limited routing
    assumes: the searches start from the best of those placements regrouped
    (`moefast.search.node.regroup`) and EPLB's hierarchical placement, and every move keeps
    the groups; a grouping that cannot fit raises ValueError (`moefast.topology.groups.check`).

    With `current` (the placement being served), the result is re-planned from it
    (`moefast.moves`): at most `max_moves` copies (an expert's weights sent to a GPU that
    did not hold it: replace or relocate = 1, swap = 2), or with `copy_cost` (rounds per
    token per copy, `moefast.moves.price_per_copy`) only moves that gain more than they
    cost. The full re-plan by `method` is relabelled to share the most replicas with
    `current` and is the result when it fits. With a topology the node-aware search walks
    from `current`, a copy priced `copy_cost` x `round_us` us per token (`copy_cost` may
    be a `moefast.moves.CopyPrice` by link, `Topology.copy_price`). With
    `objective="batch"` the batch search walks from `current` by the best gain in step
    time per copy (`moefast.search.batch.optimize_batch(max_moves=, copy_cost=)`, a copy priced
    `copy_cost` x `round_us` x `batch_size` us of step time); it, the relabelled batch
    plan (if it fits) and `current` are compared by simulated step time plus their
    copies' price. With a topology, the batch search with communication walks from
    `current` toward the full node-aware batch plan relabelled by nodes and GPUs inside
    them (`moefast.search.node_plan.replan_node_aware_batch`, the same price per copy), and
    the fastest of `current`, the walk and that plan (if it fits) on the walk's sampled
    batches, plus the copies' price, is the result.
    """
    if not isinstance(table, SubsetTable):
        raise TypeError(f"table must be a SubsetTable, got {type(table).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose 'decode' or 'batch'")
    check_memory(table.num_experts, num_gpus, slots_per_gpu)
    num_gpus, slots_per_gpu = int(num_gpus), int(slots_per_gpu)
    # Checked for every method, so that "milp" (which has no use for it) refuses what the others do.
    seed = check_seed("seed", seed)
    if time_limit is not None:
        # HiGHS ignores an invalid limit and would run without one.
        time_limit = check_positive("time_limit", time_limit)
    time_budget, work_budget = check_budgets(time_budget, work_budget)
    if num_groups is not None:
        if topology is None:
            raise ValueError("num_groups needs topology= (groups are kept on nodes)")
        check(topology, table.num_experts, num_gpus, slots_per_gpu, num_groups)
    if objective == "decode":
        given = [
            name
            for name, value in (
                ("batch_size", batch_size),
                ("cost_model", cost_model),
                ("num_batches", num_batches),
            )
            if value is not None
        ]
        if given:
            raise ValueError(f"{', '.join(given)} need objective='batch'")
        if current is not None:
            check_current(current, table.num_experts, num_gpus, slots_per_gpu)
            check_replan_options(topology, copy_cost, objective)
            if max_moves is not None:
                max_moves = check_count("max_moves", max_moves, low=0)
            price = check_copy_cost(copy_cost)
        elif max_moves is not None or copy_cost is not None:
            raise ValueError(
                "max_moves needs current= (the placement being served), and so does copy_cost"
            )
        if topology is not None or current is not None:
            fresh = optimize(
                table,
                num_gpus,
                slots_per_gpu,
                method=method,
                seed=seed,
                time_limit=time_limit,
                time_budget=time_budget,
                work_budget=work_budget,
            )
            if current is not None and topology is None:
                return replan(
                    table,
                    current,
                    slots_per_gpu,
                    target=fresh,
                    max_moves=max_moves,
                    copy_cost=price.in_node,
                ).placement
            assert topology is not None
            if current is None:
                return node_aware_decode(
                    table,
                    [fresh],
                    slots_per_gpu,
                    topology=topology,
                    round_us=round_us,
                    seed=seed,
                    num_groups=num_groups,
                )
            return replan_node_aware(
                table,
                current,
                fresh,
                slots_per_gpu,
                topology=topology,
                round_us=round_us,
                max_moves=max_moves,
                seed=seed,
                num_groups=num_groups,
                copy_cost=price,
            ).placement
        if method == "milp":
            return milp_placement(table, num_gpus, slots_per_gpu, time_limit, seed)
        return _core.optimize_placement(
            table, num_gpus, slots_per_gpu, method, seed, time_budget, work_budget
        )
    if batch_size is None or cost_model is None:
        raise ValueError("objective='batch' needs batch_size and cost_model")
    batch_size = check_count("batch_size", batch_size)
    if current is not None:
        check_current(current, table.num_experts, num_gpus, slots_per_gpu)
        check_replan_options(topology, copy_cost, objective)
        max_moves, per_token = check_move_limits(max_moves, copy_cost)
        round_us = check_non_negative("round_us", round_us)
        fresh = optimize(
            table,
            num_gpus,
            slots_per_gpu,
            method=method,
            seed=seed,
            objective="batch",
            batch_size=batch_size,
            cost_model=cost_model,
            num_batches=num_batches,
            max_evaluations=max_evaluations,
            topology=topology,
            num_groups=num_groups,
        )
        if topology is not None:
            return replan_node_aware_batch(
                table,
                current,
                fresh,
                slots_per_gpu,
                topology=topology,
                cost_model=cost_model,
                batch_size=batch_size,
                num_batches=num_batches,
                max_moves=max_moves,
                copy_price=per_token * round_us * batch_size,
                seed=seed,
                num_groups=num_groups,
            ).placement
        return replan_for_batches(
            table,
            current,
            fresh,
            slots_per_gpu,
            cost_model=cost_model,
            batch_size=batch_size,
            max_moves=max_moves,
            copy_cost=per_token,
            round_us=round_us,
            seed=seed,
            num_batches=num_batches,
            max_evaluations=max_evaluations,
        ).placement
    if max_moves is not None or copy_cost is not None:
        raise ValueError(
            "max_moves needs current= (the placement being served), and so does copy_cost"
        )
    starts = ("greedy", "eplb") if method == "greedy" else (method,)
    candidates = [
        optimize(
            table,
            num_gpus,
            slots_per_gpu,
            method=m,
            seed=seed,
            time_limit=time_limit,
            time_budget=time_budget,
            work_budget=work_budget,
        )
        for m in starts
    ]
    start = fastest_placement(table, candidates, cost_model, batch_size, seed=seed)
    found = optimize_batch(
        table,
        start,
        slots_per_gpu,
        cost_model,
        batch_size,
        seed=seed,
        num_batches=num_batches,
        max_evaluations=max_evaluations,
    )
    if topology is None:
        return found
    return node_aware_batch(
        table,
        [*candidates, found],
        slots_per_gpu,
        topology=topology,
        cost_model=cost_model,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        num_groups=num_groups,
    )


def check_budgets(
    time_budget: float | None, work_budget: int | None
) -> tuple[float | None, int | None]:
    """The greedy's search budgets: seconds (finite, >= 0) and rows read (an int >= 0)."""
    if time_budget is not None:
        time_budget = check_non_negative("time_budget", time_budget)
    if work_budget is not None:
        work_budget = check_count("work_budget", work_budget, low=0)
    return time_budget, work_budget
