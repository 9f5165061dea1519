"""Re-planning every layer of a model from the placement an engine serves, and the gain against
moves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import numpy as np

import moefast._core as _core
from moefast._core import Placement, SubsetTable
from moefast._util.checks import check_count
from moefast._util.parallel import per_core
from moefast.batch.times import mean_step_time
from moefast.moves import (
    ROUND_US,
    CopyPrice,
    Replan,
    check_copy_cost,
    check_current,
    check_full,
)
from moefast.planning.executors import replan_on
from moefast.planning.layer import replan_layer
from moefast.search.replan import check_replan_options
from moefast.topology.times import expected_time, sample_batch_time

if TYPE_CHECKING:
    from moefast.batch.cost_model import CostModel
    from moefast.topology.times import Topology


def replan_layers(
    tables: Sequence[SubsetTable],
    currents: Sequence[Placement],
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
    executor: Executor | None = None,
    layer_ids: Sequence[int] | None = None,
    **optimize_options: Any,
) -> list[Replan]:
    """Every layer re-planned by `replan_layer`, layers in parallel: on threads, or on the
    workers of ``executor`` (`moefast.planning.executors.replan_on`; the same results).
    ``layer_ids`` name the layers in errors (default: positions)."""
    if len(currents) != len(tables):
        raise ValueError(
            f"current has {len(currents)} layers, the trace {len(tables)}: one placement per"
            " layer is needed"
        )
    ids = list(range(len(tables))) if layer_ids is None else list(layer_ids)
    for layer, t, c in zip(ids, tables, currents, strict=True):
        try:
            check_current(c, t.num_experts, num_gpus, slots_per_gpu)
            if topology is not None and optimize_options.get("objective") != "batch":
                check_full(c, slots_per_gpu)
            if num_groups is not None and topology is not None:
                _core.topology_group_nodes(c, num_groups, topology.gpus_per_node)
        except ValueError as e:
            raise ValueError(f"layer {layer}: {e}") from None
    check_replan_options(topology, copy_cost, optimize_options.get("objective", "decode"))
    price = check_copy_cost(copy_cost)
    if max_moves is not None:
        max_moves = check_count("max_moves", max_moves, low=0)
    options = dict(
        optimize_options,
        max_moves=max_moves,
        copy_cost=price,
        coverage=coverage,
        method=method,
        seed=seed,
        topology=topology,
        round_us=round_us,
        num_groups=num_groups,
    )
    if executor is not None:
        return replan_on(executor, tables, currents, ids, num_gpus, slots_per_gpu, options)

    def one(layer: tuple[SubsetTable, Placement]) -> Replan:
        return replan_layer(*layer, num_gpus, slots_per_gpu, **options)

    return per_core(one, list(zip(tables, currents, strict=True)))


def gain_curve(replans: Sequence[Replan], budgets: Sequence[int]) -> list[dict[str, Any]]:
    """Gain against moves over layers: for each budget (copies per layer), the mean cost
    over layers of the best point each layer's re-plan found within it, and the share of
    the full re-plans' gain (summed over layers) it recovers; a last row for the full
    re-plan (its copies: the mean over layers)."""
    if not replans:
        raise ValueError("replans is empty")
    stale = float(np.mean([r.stale_cost for r in replans]))
    full = [r.full_cost for r in replans]
    full_mean = None if any(x is None for x in full) else float(np.mean(full))  # type: ignore[arg-type]
    gain = None if full_mean is None or stale - full_mean <= 0 else stale - full_mean
    rows: list[dict[str, Any]] = []
    for b in budgets:
        cost = float(np.mean([r.cost_within(b) for r in replans]))
        rows.append(
            {
                "moves": int(b),
                "cost": cost,
                "share_of_full_gain": None if gain is None else (stale - cost) / gain,
            }
        )
    if full_mean is not None:
        mean_copies = float(np.mean([r.full_copies for r in replans]))
        rows.append(
            {
                "moves": f"full re-plan ({mean_copies:.0f} per layer)",
                "cost": full_mean,
                "share_of_full_gain": None if gain is None else 1.0,
            }
        )
    return rows


def replan_summary(
    replans: Sequence[Replan],
    max_moves: int | None,
    copy_cost: float | CopyPrice | None,
    slots: int,
    unit: str = "rounds",
    walk_points: bool = True,
) -> dict[str, Any]:
    """What `plan` records of a re-plan (JSON): per layer the copies and costs (``unit``:
    expert rounds, or us per token with a topology; on the tables re-planned for), and the
    gain against moves at 0, 1/4, 1/2, 3/4 of the budget and the budget (or of the most
    copies a layer used), then the full re-plan; at 0 and the budget only when the paths
    hold no point between (`walk_points` False: the batch walk keeps its end only)."""
    top = max_moves if max_moves is not None else max(r.copies for r in replans)
    budgets = sorted({0, top // 4, top // 2, 3 * top // 4, top} if walk_points else {0, top})
    return {
        "max_moves": max_moves,
        "copy_cost": dataclasses.asdict(copy_cost)
        if isinstance(copy_cost, CopyPrice)
        else copy_cost,
        "slots": slots,
        "unit": unit,
        "copies": [r.copies for r in replans],
        "costs": [r.cost for r in replans],
        "stale_costs": [r.stale_cost for r in replans],
        "full_copies": [r.full_copies for r in replans],
        "full_costs": [r.full_cost for r in replans],
        "curve": gain_curve(replans, budgets),
    }


def held_out_gain(
    tables: Sequence[SubsetTable],
    replans: Sequence[Replan],
    currents: Sequence[Placement],
    topology: Topology | None = None,
    round_us: float = ROUND_US,
    *,
    cost_model: CostModel | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The re-plan scored on held-out tables (tokens not planned on), one per layer: mean
    cost per layer of the served placement, the re-plan and the full re-plan (expert
    rounds; with `topology`, us per token with communication; with `cost_model` and
    `batch_size` and no topology, the mean step time in us of 256 steps of `batch_size`
    held-out tokens, the same steps for each placement; with a topology too, the mean
    achievable layer time with communication of `sample_batch_time`'s batches of them),
    and the share of the full re-plan's gain (summed over layers) that the re-plan
    recovers (None when the full re-plan is not faster held out: no gain to recover)."""

    def cost(table: SubsetTable, placement: Placement) -> float:
        if cost_model is not None and batch_size is not None:
            if topology is None:
                return mean_step_time(table, placement, cost_model, batch_size, seed=seed)
            return sample_batch_time(
                table,
                placement,
                topology=topology,
                cost_model=cost_model,
                batch_size=batch_size,
                seed=seed,
            )
        if topology is None:
            return float(_core.expected_cost(table, placement))
        return expected_time(table, placement, topology, round_us=round_us)

    served = [cost(t, c) for t, c in zip(tables, currents, strict=True)]
    ours = [cost(t, r.placement) for t, r in zip(tables, replans, strict=True)]
    fulls = [
        None if r.full is None else cost(t, r.full) for t, r in zip(tables, replans, strict=True)
    ]
    full = None if any(x is None for x in fulls) else float(np.mean(fulls))  # type: ignore[arg-type]
    stale, mean = float(np.mean(served)), float(np.mean(ours))
    gain = None if full is None or stale - full <= 0 else stale - full
    return {
        "served": stale,
        "replanned": mean,
        "full": full,
        "share_of_full_gain": None if gain is None else (stale - mean) / gain,
    }


def curve_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The gain-against-moves table of `replan_summary` as text columns."""
    unit = summary.get("unit", "rounds")
    header = ["moves per layer", "share of slots", f"mean cost ({unit})", "share of full gain"]
    rows = []
    for row in summary["curve"]:
        moves = row["moves"]
        slots = f"{moves / summary['slots']:.1%}" if isinstance(moves, int) else ""
        share = row["share_of_full_gain"]
        rows.append(
            [str(moves), slots, f"{row['cost']:.4f}", "" if share is None else f"{share:.0%}"]
        )
    return header, rows
