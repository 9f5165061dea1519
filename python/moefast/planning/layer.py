"""One layer planned or re-planned, the unit of work that threads and executors run."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from moefast._core import Placement, SubsetTable
from moefast.evaluate.selection import Estimator
from moefast.moves import ROUND_US, CopyPrice, Replan, check_move_limits
from moefast.search.methods import optimize
from moefast.search.node_plan import (
    node_aware_batch,
    node_aware_decode,
    replan_node_aware,
    replan_node_aware_batch,
)
from moefast.search.options import Budget, Objective
from moefast.search.replan import replan, replan_for_batches
from moefast.topology.cluster import Cluster

if TYPE_CHECKING:
    from moefast.topology.times import Topology


def replan_layer(
    table: SubsetTable,
    current: Placement,
    num_gpus: int,
    slots_per_gpu: int,
    *,
    max_moves: int | None = None,
    copy_cost: float | CopyPrice | None = None,
    coverage: float = 1.0,
    method: str = "greedy",
    seed: int = 0,
    topology: Topology | None = None,
    round_us: float = ROUND_US,
    num_groups: int | None = None,
    **optimize_options: Any,
) -> Replan:
    """One layer re-planned: the full re-plan by `optimize` (`method`, `seed`,
    ``optimize_options``) on the table pruned to `coverage`, then `replan` toward it from
    the layer's current placement. With `topology` (decode), costs are us per token: the
    node-aware re-plan of `moefast.search.node_plan.replan_node_aware` from that compute-only
    plan, measured against the full node-aware plan (`node_aware_decode`) as `plan`
    without `current` would make it; `copy_cost` (rounds per token per copy, or a
    `CopyPrice` by link) prices a copy `copy_cost` x `round_us` us per token there. With a
    topology and ``objective="batch"``, costs are us per step of ``batch_size`` tokens on
    the walk's sample: `moefast.search.node_plan.replan_node_aware_batch` walks toward the
    full node-aware batch plan (`node_aware_batch` from the compute-only batch plan), a
    copy priced ``copy_cost`` x ``round_us`` x ``batch_size`` us of step time."""

    if coverage < 1.0:
        table = table.prune(coverage=coverage)
    fresh = optimize_layer(table, num_gpus, slots_per_gpu, method, seed, **optimize_options)
    if topology is None:
        _, price = check_move_limits(max_moves, copy_cost)
        if optimize_options.get("objective") == "batch":
            return replan_for_batches(
                table,
                current,
                fresh,
                slots_per_gpu,
                cost_model=optimize_options["cost_model"],
                batch_size=optimize_options["batch_size"],
                max_moves=max_moves,
                copy_cost=price,
                round_us=round_us,
                seed=seed,
                num_batches=optimize_options.get("num_batches"),
                max_evaluations=optimize_options.get("max_evaluations", 40_000),
            )
        return replan(
            table, current, slots_per_gpu, target=fresh, max_moves=max_moves, copy_cost=price
        )
    if optimize_options.get("objective") == "batch":
        _, per_token = check_move_limits(max_moves, copy_cost)
        batch_size = optimize_options["batch_size"]
        full = node_aware_batch(
            table,
            [fresh],
            slots_per_gpu,
            topology=topology,
            cost_model=optimize_options["cost_model"],
            batch_size=batch_size,
            num_batches=None,
            seed=seed,
            num_groups=num_groups,
        )
        found = replan_node_aware_batch(
            table,
            current,
            full,
            slots_per_gpu,
            topology=topology,
            cost_model=optimize_options["cost_model"],
            batch_size=batch_size,
            num_batches=None,
            max_moves=max_moves,
            copy_price=per_token * round_us * batch_size,
            seed=seed,
            num_groups=num_groups,
        )
        return dataclasses.replace(found, compute_only=fresh)
    full = node_aware_decode(
        table,
        [fresh],
        slots_per_gpu,
        topology=topology,
        round_us=round_us,
        seed=seed,
        num_groups=num_groups,
    )
    found = replan_node_aware(
        table,
        current,
        fresh,
        slots_per_gpu,
        topology=topology,
        round_us=round_us,
        max_moves=max_moves,
        copy_cost=copy_cost,
        seed=seed,
        num_groups=num_groups,
        full=full,
    )
    return dataclasses.replace(found, compute_only=fresh)


def plan_one_layer(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    method: str,
    estimator: Estimator,
    seed: int,
    time_budget: float | None = None,
    work_budget: int | None = None,
    **optimize_options: Any,
) -> Placement:
    """One layer's placement, planned on the table the estimator makes of ``table``
    (`plan_layers` runs it on threads, `moefast.planning.executors` on workers)."""
    if estimator.coverage < 1.0:
        table = table.prune(coverage=estimator.coverage)
    return optimize_layer(
        table,
        num_gpus,
        slots_per_gpu,
        method,
        seed,
        time_budget=time_budget,
        work_budget=work_budget,
        **optimize_options,
    )


def optimize_layer(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    method: str,
    seed: int,
    *,
    time_limit: float | None = None,
    time_budget: float | None = None,
    work_budget: int | None = None,
    objective: str = "decode",
    **objective_options: Any,
) -> Placement:
    """`optimize` with the options a plan hands its layers by name, as plain values that
    travel to workers: ``objective`` (its kind) and ``objective_options`` (batch_size,
    cost_model, num_batches, max_evaluations) make the `Objective`, the limits the
    `Budget`."""
    return optimize(
        table,
        Cluster(num_gpus, slots_per_gpu),
        method=method,
        seed=seed,
        objective=Objective(objective, **objective_options),  # type: ignore[arg-type]
        budget=Budget(time_limit, time_budget, work_budget),
    )
