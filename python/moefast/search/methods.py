"""`optimize`: one layer's placement by the method and objective asked for.

Decode methods: the product's greedy and the engines' baselines run in the core, the exact
MILP in `moefast.search.milp`. The batch objective (`moefast.search.batch`) improves the best
of those placements by a local search on sampled batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import moefast._core as _core
from moefast._core import MAX_GPUS, Placement, SubsetTable
from moefast._util.checks import check_int, check_placement, check_seed
from moefast._util.deprecation import Homes, old_keywords, regroup
from moefast.moves import MoveBudget, check_copy_cost, check_current, check_move_limits
from moefast.search.batch import fastest_placement, optimize_batch
from moefast.search.milp import milp_placement
from moefast.search.node_plan import (
    node_aware_batch,
    node_aware_decode,
    replan_node_aware,
    replan_node_aware_batch,
)
from moefast.search.options import Budget, Objective
from moefast.search.replan import check_replan_options, replan, replan_for_batches
from moefast.topology.cluster import Cluster, as_cluster
from moefast.topology.groups import check

T = TypeVar("T")

#: The core's methods ("greedy", moefast's best effort, and the placements inference
#: engines use today) and "milp", exact for small layers (HiGHS, in Python).
METHODS = (*_core.METHODS, "milp")


def check_memory(num_experts: int, num_gpus: int, slots_per_gpu: int) -> None:
    """The core's feasibility check (`_core.check_memory`) after the integer checks."""
    num_gpus = check_int("num_gpus", num_gpus, 1, MAX_GPUS)
    slots_per_gpu = check_int("slots_per_gpu", slots_per_gpu, 1)
    _core.check_memory(num_experts, num_gpus, slots_per_gpu)


#: Where each keyword of the older calling form goes now: (option, field).
OLD_KEYWORDS = {
    "num_gpus": ("cluster", "num_gpus"),
    "slots_per_gpu": ("cluster", "slots_per_gpu"),
    "topology": ("cluster", "topology"),
    "num_groups": ("cluster", "num_groups"),
    "round_us": ("cluster", "round_us"),
    "objective": ("objective", "kind"),
    "batch_size": ("objective", "batch_size"),
    "cost_model": ("objective", "cost_model"),
    "num_batches": ("objective", "num_batches"),
    "max_evaluations": ("objective", "max_evaluations"),
    "time_limit": ("budget", "time_limit"),
    "time_budget": ("budget", "time_budget"),
    "work_budget": ("budget", "work_budget"),
    "current": ("moves", "current"),
    "max_moves": ("moves", "max_moves"),
    "copy_cost": ("moves", "copy_cost"),
}
#: The option classes of `optimize`, by argument.
OPTION_CLASSES: dict[str, Callable[..., Any]] = {
    "cluster": Cluster,
    "objective": Objective,
    "budget": Budget,
    "moves": MoveBudget,
}


def _new_form(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], Homes]:
    return regroup(args, kwargs, OLD_KEYWORDS, OPTION_CLASSES)


def check_option(name: str, value: object, cls: type[T]) -> T | None:
    """``value`` if it is a ``cls`` or None; TypeError naming the argument if not."""
    if value is not None and not isinstance(value, cls):
        raise TypeError(
            f"{name} must be a moefast.{cls.__name__} or None, got {type(value).__name__}"
        )
    return value


@old_keywords(_new_form)
def optimize(
    table: SubsetTable,
    cluster: Cluster | int,
    slots_per_gpu: int | None = None,
    *,
    method: str = "greedy",
    seed: int = 0,
    objective: Objective | None = None,
    budget: Budget | None = None,
    moves: MoveBudget | None = None,
) -> Placement:
    """A placement of `table`'s experts on the `cluster`'s GPUs, ``cluster.slots_per_gpu``
    slots each. ``optimize(table, 8, 9)`` is short for ``optimize(table, Cluster(8, 9))``.

    Every expert gets at least one replica and every slot is filled with distinct experts
    (an extra replica never raises the cost). The same seed gives the same placement.
    ``budget.time_limit`` (seconds) bounds the MILP; if it stops before proving optimality
    it warns with NotProvenOptimalWarning.

    The `objective` (an `Objective`; default: decode) says what is minimized. Decode: the
    expected cost of one token (expert rounds). ``Objective("batch", batch_size,
    cost_model)``: the mean step time of batches of ``batch_size`` tokens under
    ``cost_model`` (microseconds), by a local search (`moefast.search.batch.optimize_batch`,
    which takes ``num_batches`` and ``max_evaluations``) from the better of the greedy and
    EPLB placements, or from `method`'s placement when another method is named.

    ``budget.time_budget`` (seconds) and ``budget.work_budget`` (rows read by the greedy's
    exact evaluations) make the greedy anytime: a small budget stops its searches early,
    and what the greedy leaves of a larger one goes to an iterated local search from its
    placement (random moves, then swaps and reassignments on exact deltas, the best kept)
    until the budget is spent or 8 rounds in a row find nothing; the best placement found
    is returned. A work budget keeps the result deterministic (same seed, same placement
    on any machine), a time budget does not. A complete placement is always built first
    (about a sixth of an unbudgeted run on a DeepSeek-V3-size layer), so a very small
    budget can be exceeded. Without a budget the greedy's placement is returned as is.
    Baselines and the MILP ignore them.

    With ``cluster.topology`` (decode), the token time in us is minimized:
    ``cluster.round_us`` per expert round plus dispatch and combine between nodes
    (`moefast.search.node.place`, from `method`'s placement). With a topology and the batch
    objective, the layer time of batches with communication
    (`moefast.search.node.place_batch`, from the starts and the compute-only batch search's
    result). ``cluster.num_groups`` keeps each of that many groups of consecutive expert ids
    on one node, as DeepSeek-V3's group-limited routing assumes: the searches start from the
    best of those placements regrouped (`moefast.search.node.regroup`) and EPLB's
    hierarchical placement, and every move keeps the groups; a grouping that cannot fit
    raises ValueError (`moefast.topology.groups.check`).

    With `moves` (a `MoveBudget` from ``current``, the placement being served), the result
    is re-planned from it (`moefast.moves`): at most ``max_moves`` copies (an expert's
    weights sent to a GPU that did not hold it: replace or relocate = 1, swap = 2), or with
    ``copy_cost`` (rounds per token per copy, `moefast.moves.price_per_copy`) only moves
    that gain more than they cost. The full re-plan by `method` is relabelled to share the
    most replicas with ``current`` and is the result when it fits. With a topology the
    node-aware search walks from ``current``, a copy priced ``copy_cost`` x ``round_us`` us
    per token (``copy_cost`` may be a `moefast.moves.CopyPrice` by link,
    `Topology.copy_price`). With the batch objective the batch search walks from
    ``current`` by the best gain in step time per copy
    (`moefast.search.batch.optimize_batch(max_moves=, copy_cost=)`, a copy priced
    ``copy_cost`` x ``round_us`` x ``batch_size`` us of step time); it, the relabelled batch
    plan (if it fits) and ``current`` are compared by simulated step time plus their
    copies' price. With a topology, the batch search with communication walks from
    ``current`` toward the full node-aware batch plan relabelled by nodes and GPUs inside
    them (`moefast.search.node_plan.replan_node_aware_batch`, the same price per copy), and
    the fastest of ``current``, the walk and that plan (if it fits) on the walk's sampled
    batches, plus the copies' price, is the result.

    The older keywords (``num_gpus=``, ``topology=``, ``objective="batch"``,
    ``batch_size=``, ``time_budget=``, ``current=``, ``max_moves=``, ...) still work for one
    release, with a DeprecationWarning naming each one's new home.
    """
    if not isinstance(table, SubsetTable):
        raise TypeError(f"table must be a SubsetTable, got {type(table).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    cluster = as_cluster(cluster, slots_per_gpu)
    goal = check_option("objective", objective, Objective) or Objective()
    search = check_option("budget", budget, Budget) or Budget()
    check_option("moves", moves, MoveBudget)
    num_gpus, slots_per_gpu = cluster.num_gpus, cluster.slots_per_gpu
    topology, num_groups, round_us = cluster.topology, cluster.num_groups, cluster.round_us
    batch_size, cost_model = goal.batch_size, goal.cost_model
    num_batches, max_evaluations = goal.num_batches, goal.max_evaluations
    time_limit, time_budget, work_budget = search.time_limit, search.time_budget, search.work_budget
    current, max_moves, copy_cost = None, None, None
    if moves is not None:
        current = check_placement(moves.current, "current")
        max_moves, copy_cost = moves.max_moves, moves.copy_cost
    check_memory(table.num_experts, num_gpus, slots_per_gpu)
    # Checked for every method, so that "milp" (which has no use for it) refuses what the others do.
    seed = check_seed("seed", seed)
    if num_groups is not None:
        assert topology is not None  # Cluster checks it
        check(topology, table.num_experts, num_gpus, slots_per_gpu, num_groups)
    if goal.kind == "decode":
        if cost_model is not None:  # a decode plan has no steps to time
            raise ValueError("cost_model needs objective='batch'")
        if current is not None:
            check_current(current, table.num_experts, num_gpus, slots_per_gpu)
            check_replan_options(topology, copy_cost, goal.kind)
            price = check_copy_cost(copy_cost)
        if topology is not None or current is not None:
            fresh = optimize(table, cluster.compute_only, method=method, seed=seed, budget=search)
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
    assert batch_size is not None and cost_model is not None  # Objective checks them
    if current is not None:
        check_current(current, table.num_experts, num_gpus, slots_per_gpu)
        check_replan_options(topology, copy_cost, goal.kind)
        max_moves, per_token = check_move_limits(max_moves, copy_cost)
        fresh = optimize(table, cluster, method=method, seed=seed, objective=goal)
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
    starts = ("greedy", "eplb") if method == "greedy" else (method,)
    candidates = [
        optimize(table, cluster.compute_only, method=m, seed=seed, budget=search) for m in starts
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
