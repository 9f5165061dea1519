"""Re-planning one layer within a move budget: the decode walk (the core's) and the batch walk
toward a batch plan.
"""

from __future__ import annotations

import moefast._core as _core
from moefast._core import Placement, SubsetTable
from moefast._util.checks import check_placement
from moefast.batch.cost_model import CostModel
from moefast.batch.times import mean_step_time
from moefast.moves import (
    ROUND_US,
    CopyPrice,
    Replan,
    check_copy_cost,
    check_current,
    check_move_limits,
    copies,
    relabel,
)
from moefast.search.batch import optimize_batch
from moefast.topology.times import Topology


def replan(
    table: SubsetTable,
    current: Placement,
    slots_per_gpu: int,
    *,
    target: Placement | None = None,
    max_moves: int | None = None,
    copy_cost: float | None = None,
) -> Replan:
    """`current` re-planned for `table` (decode cost) with at most `max_moves` copies
    (None: any) and `copy_cost` rounds per token per copy, moving toward `target` (the
    full re-plan, any GPU labels) when given. The result never costs more than `current`,
    and with enough moves no more than `target`."""
    if not isinstance(table, SubsetTable):
        raise TypeError(f"table must be a SubsetTable, got {type(table).__name__}")
    check_placement(current, "current")
    check_current(current, table.num_experts, current.num_gpus, slots_per_gpu)
    if target is not None:
        check_placement(target, "target")
    max_moves, price = check_move_limits(max_moves, copy_cost)
    placement, moved, cost, path, full = _core.replan_placement(
        table, current, slots_per_gpu, max_moves, price, target
    )
    return Replan(
        placement=placement,
        copies=moved,
        cost=cost,
        stale_cost=path[0][1],
        path=tuple((int(c), float(x)) for c, x in path),
        full=None if full is None else full[0],
        full_copies=None if full is None else full[1],
        full_cost=None if full is None else full[2],
    )


def replan_for_batches(
    table: SubsetTable,
    current: Placement,
    fresh: Placement,
    slots_per_gpu: int,
    *,
    cost_model: CostModel,
    batch_size: int,
    max_moves: int | None = None,
    copy_cost: float = 0.0,
    round_us: float = ROUND_US,
    seed: int = 0,
    num_batches: int | None = None,
    max_evaluations: int = 40_000,
) -> Replan:
    """`current` re-planned for batches of `batch_size` tokens (no topology): the batch
    walk from `current` (`moefast.search.batch.optimize_batch(max_moves=, copy_cost=)`), the full
    batch plan `fresh` relabelled to share the most replicas with `current` (when it fits
    the budget) and `current` itself; the one of least simulated step time plus its
    copies' price (`copy_cost` x `round_us` x `batch_size` us per copy) is kept. Costs are
    mean step times (us) of 256 simulated steps drawn from `table`, the same steps for
    every candidate; the path has the walk's end only (its intermediate placements are
    not kept)."""

    full = relabel(current, fresh)
    walked = optimize_batch(
        table,
        current,
        slots_per_gpu,
        cost_model,
        batch_size,
        seed=seed,
        num_batches=num_batches,
        max_evaluations=max_evaluations,
        max_moves=max_moves,
        copy_cost=copy_cost,
        round_us=round_us,
    )

    step_price = copy_cost * round_us * batch_size
    candidates = [current, walked, full]
    times = [mean_step_time(table, p, cost_model, batch_size, seed=seed) for p in candidates]
    moved = [copies(current, p) for p in candidates]
    fits = [max_moves is None or m <= max_moves for m in moved]
    best = min((i for i in range(3) if fits[i]), key=lambda i: times[i] + step_price * moved[i])
    path = [(0, times[0])]
    if moved[1] > 0:
        path.append((moved[1], times[1]))
    return Replan(
        placement=candidates[best],
        copies=moved[best],
        cost=times[best],
        stale_cost=times[0],
        path=tuple(path),
        full=full,
        full_copies=moved[2],
        full_cost=times[2],
    )


def check_replan_options(
    topology: Topology | None,
    copy_cost: float | CopyPrice | None,
    objective: str,
) -> None:
    """Re-planning with a topology walks the decode time, or the batch step time
    (`objective`), with communication under a move budget and a copy price (`copy_cost`,
    a float or, for decode, a `CopyPrice` by link); without one a copy has one price."""
    price = check_copy_cost(copy_cost)
    if topology is None:
        check_move_limits(None, price)
        return
    if objective != "decode" and price.in_node != price.across_nodes:
        raise ValueError(
            "a CopyPrice by link (in_node != across_nodes) is for the decode node-aware"
            " re-plan: with objective='batch' a copy has one price (a float copy_cost)"
        )
