"""Node-aware plans of one layer from compute-only starts, and the layer times with
communication that `moefast.plan` reports for them.

`node_aware_decode` and `node_aware_batch` are what `optimize(topology=...)` and
`plan(topology=...)` run after the compute-only plan (`replan_node_aware` and
`replan_node_aware_batch` when re-planning from a served placement): the decode search
(`moefast.search.node.place`) or the batch search (`place_batch`), with `num_groups` from
the best start that keeps each expert group on one node (the compute-only starts
regrouped, one built from the table, and EPLB's hierarchical placement). `compare_times`
scores the node-aware plan beside EPLB (hierarchical when there are groups, global) and the
compute-only plan, in us of modeled layer time with communication, on held-out tables when
the plan holds tokens out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moefast._core import Placement, SubsetTable
from moefast.batch.cost_model import CostModel
from moefast.moves import CopyPrice, Replan, check_copy_cost, copies, copies_price, relabel
from moefast.search.node import (
    eplb_hierarchical,
    place,
    place_batch,
    place_batch_walk,
    place_walk,
    regroup,
    spread_groups,
)
from moefast.topology.groups import group_nodes
from moefast.topology.times import Topology, expected_time, sample_batch_time, walk_batches

NODE_AWARE = "node-aware (moefast)"
EPLB_HIERARCHICAL = "EPLB hierarchical"
EPLB_GLOBAL = "EPLB global"
SERVED = "served (current)"


def grouped_starts(
    table: SubsetTable,
    starts: Sequence[Placement],
    slots_per_gpu: int,
    topology: Topology,
    round_us: float,
    num_groups: int,
) -> list[Placement]:
    """Starts that keep each of `num_groups` groups on one node: each of `starts`
    regrouped (`moefast.search.node.regroup`), one built from the table (`spread_groups`),
    then EPLB's hierarchical placement when EPLB takes that policy."""
    num_gpus = starts[0].num_gpus
    out = [
        regroup(
            table, s, slots_per_gpu, num_groups=num_groups, topology=topology, round_us=round_us
        )
        for s in starts
    ]
    out.append(
        spread_groups(
            table,
            num_gpus,
            slots_per_gpu,
            num_groups=num_groups,
            topology=topology,
            round_us=round_us,
        )
    )
    hierarchical = eplb_hierarchical(
        table,
        num_gpus,
        slots_per_gpu,
        num_groups=num_groups,
        gpus_per_node=topology.gpus_per_node,
    )
    return out if hierarchical is None else [*out, hierarchical]


def best_decode_start(
    table: SubsetTable,
    starts: Sequence[Placement],
    slots_per_gpu: int,
    topology: Topology,
    round_us: float,
    num_groups: int | None,
) -> Placement:
    """The start of the decode search: `starts[0]`, or with `num_groups` the grouped start
    (`grouped_starts`) of least expected token time (the first on ties)."""
    if num_groups is None:
        return starts[0]
    candidates = grouped_starts(table, starts, slots_per_gpu, topology, round_us, num_groups)
    times = [expected_time(table, p, topology, round_us=round_us) for p in candidates]
    return candidates[int(np.argmin(times))]


def node_aware_decode(
    table: SubsetTable,
    starts: Sequence[Placement],
    slots_per_gpu: int,
    *,
    topology: Topology,
    round_us: float,
    seed: int,
    num_groups: int | None = None,
) -> Placement:
    """The decode node-aware search from the compute-only placement `starts[0]` (with
    `num_groups`: from the best grouped start, every group kept on one node)."""
    start = best_decode_start(table, starts, slots_per_gpu, topology, round_us, num_groups)
    found, _ = place(
        table,
        start,
        slots_per_gpu,
        topology=topology,
        round_us=round_us,
        seed=seed,
        num_groups=num_groups,
    )
    return found


def replan_node_aware(
    table: SubsetTable,
    current: Placement,
    fresh: Placement,
    slots_per_gpu: int,
    *,
    topology: Topology,
    round_us: float,
    max_moves: int | None,
    seed: int,
    num_groups: int | None = None,
    full: Placement | None = None,
    copy_cost: float | CopyPrice | None = None,
) -> Replan:
    """`current` re-planned for the decode time with communication (us per token) with at
    most `max_moves` copies: the node-aware search walks from it, half its candidate moves
    toward the compute-only plan `fresh` (with `num_groups`: the best grouped start made
    from it), renamed by whole nodes and GPUs inside them to share the most replicas with
    `current`; that target is the result when it fits the budget and is faster, and so is
    `full` (the full node-aware re-plan, renamed likewise; the gain against moves is
    measured against it). Costs are in us. `copy_cost` (rounds per token per copy, or a
    `CopyPrice` by link) prices a copy `copy_cost` x `round_us` us per token: the walk
    makes a move only if it gains more than that, and the result is the one of least time
    plus its copies' price."""
    price = check_copy_cost(copy_cost)
    if num_groups is not None:
        try:
            group_nodes(current, num_groups, topology.gpus_per_node)
        except ValueError as e:
            raise ValueError(f"current: {e}") from None
        fresh = best_decode_start(table, [fresh], slots_per_gpu, topology, round_us, num_groups)
    target = relabel(current, fresh, topology.gpus_per_node)
    found, _, path = place_walk(
        table,
        current,
        slots_per_gpu,
        topology=topology,
        round_us=round_us,
        max_moves=max_moves,
        seed=seed,
        target=target,
        num_groups=num_groups,
        copy_cost=price,
    )

    def time_of(p: Placement) -> float:
        return expected_time(table, p, topology, round_us=round_us)

    def net(p: Placement, time: float) -> float:
        return time + round_us * copies_price(current, p, price, topology.gpus_per_node)

    best, best_time = found, time_of(found)
    if full is not None:
        full = relabel(current, full, topology.gpus_per_node)
    for candidate in (target, full):
        if candidate is None:
            continue
        if max_moves is None or copies(current, candidate) <= max_moves:
            t = time_of(candidate)
            if net(candidate, t) < net(best, best_time):
                best, best_time = candidate, t
    return Replan(
        placement=best,
        copies=copies(current, best),
        cost=best_time,
        stale_cost=path[0][1],
        path=tuple((int(c), float(x)) for c, x in path),
        full=full,
        full_copies=None if full is None else copies(current, full),
        full_cost=None if full is None else time_of(full),
    )


def node_aware_batch(
    table: SubsetTable,
    starts: Sequence[Placement],
    slots_per_gpu: int,
    *,
    topology: Topology,
    cost_model: CostModel,
    batch_size: int,
    num_batches: int | None,
    seed: int,
    num_groups: int | None = None,
) -> Placement:
    """The batch search with communication (`place_batch`) from the best of `starts`
    (with `num_groups`: of the grouped starts, every group kept on one node)."""
    if num_groups is not None:
        # A round of decode is the cost model's weight read (alpha).
        starts = grouped_starts(
            table, starts, slots_per_gpu, topology, cost_model.alpha, num_groups
        )
    placed, _ = place_batch(
        table,
        starts,
        slots_per_gpu,
        topology=topology,
        cost_model=cost_model,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        num_groups=num_groups,
    )
    return placed


def replan_node_aware_batch(
    table: SubsetTable,
    current: Placement,
    full: Placement,
    slots_per_gpu: int,
    *,
    topology: Topology,
    cost_model: CostModel,
    batch_size: int,
    num_batches: int | None,
    max_moves: int | None,
    seed: int,
    copy_price: float = 0.0,
    max_evaluations: int = 2_000,
    num_groups: int | None = None,
) -> Replan:
    """`current` re-planned for the layer time of batches of `batch_size` tokens with
    communication (us), with at most `max_moves` copies: the batch search walks from it
    (`place_batch_walk`), half its candidate steps toward `full` (the full node-aware
    batch plan) renamed by whole nodes and GPUs inside them to share the most replicas
    with `current`. The walk's sample is `num_batches` batches (default `walk_batches`,
    four times `place_batch`'s); a step is made only if it gains more than `copy_price`
    us of step time per copy. The result is the fastest of `current`, the walk and that
    renamed plan (when it fits the budget) on that sample and its validation sample
    together (the walk was fitted to the first alone, the plan to a quarter of it), plus
    its copies' price; the costs recorded are on the walk's sample, where its path is."""
    if num_groups is not None:
        try:
            group_nodes(current, num_groups, topology.gpus_per_node)
        except ValueError as e:
            raise ValueError(f"current: {e}") from None
    target = relabel(current, full, topology.gpus_per_node)
    if num_batches is None:
        num_batches = walk_batches(batch_size)
    walked, _, _, path = place_batch_walk(
        table,
        current,
        slots_per_gpu,
        topology=topology,
        cost_model=cost_model,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        max_moves=max_moves,
        copy_price=copy_price,
        target=target,
        max_evaluations=max_evaluations,
        num_groups=num_groups,
    )

    def time_of(p: Placement, validation: bool = False) -> float:
        return sample_batch_time(
            table,
            p,
            topology=topology,
            cost_model=cost_model,
            batch_size=batch_size,
            num_batches=num_batches,
            seed=seed,
            validation=validation,
        )

    candidates = [current, walked]
    if max_moves is None or copies(current, target) <= max_moves:
        candidates.append(target)
    both = [
        (time_of(p) + time_of(p, validation=True)) / 2 + copy_price * copies(current, p)
        for p in candidates
    ]
    best = candidates[int(np.argmin(both))]
    return Replan(
        placement=best,
        copies=copies(current, best),
        cost=time_of(best),
        stale_cost=path[0][1],
        path=tuple(path),
        full=target,
        full_copies=copies(current, target),
        full_cost=time_of(target),
    )


@dataclass
class TimeComparison:
    """Modeled layer time (us, with communication) of each placement in each layer.

    ``measure`` says what a figure is (one token's exact mean time, or the mean achievable
    time of sampled batches of B tokens); ``basis`` "held-out" or "in-sample" and ``note``
    on which tokens."""

    layer_ids: list[int]
    times_us: dict[str, list[float]]
    basis: str
    note: str
    measure: str

    def mean(self, label: str) -> float:
        return float(np.mean(self.times_us[label]))

    def as_settings(self) -> dict[str, Any]:
        """A JSON-friendly record (`ModelPlacement.settings["topology"]`)."""
        return {
            "basis": self.basis,
            "note": self.note,
            "measure": self.measure,
            "layer_ids": list(self.layer_ids),
            "layer_times_us": {k: [float(x) for x in v] for k, v in self.times_us.items()},
            "mean_time_us": {k: self.mean(k) for k in self.times_us},
        }


def headline(record: dict[str, Any]) -> str:
    """One line of a `TimeComparison.as_settings()` record: the node-aware plan's mean
    time against each other placement's, and the basis."""
    means = record["mean_time_us"]
    ours = means[NODE_AWARE]
    parts = [
        f"{label} {t:.2f} us ({100 * (t / ours - 1):+.2f}%)"
        for label, t in means.items()
        if label != NODE_AWARE
    ]
    return (
        f"node-aware {ours:.2f} us per layer on average; "
        + ", ".join(parts)
        + f"; {record['basis']}"
    )


def _cell(time: float, ours: float, node_aware: bool, digits: int) -> str:
    text = f"{time:.2f}"
    return text if node_aware else f"{text} ({100 * (time / ours - 1):+.{digits}f}%)"


def time_rows(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and per-layer rows (and a mean row) of a `TimeComparison.as_settings()` record:
    us per layer, and each placement's time over the node-aware one's in percent."""
    times = record["layer_times_us"]
    labels = list(times)
    header = ["layer", *labels]
    rows = []
    for i, layer in enumerate(record["layer_ids"]):
        ours = times[NODE_AWARE][i]
        rows.append([str(layer), *(_cell(times[x][i], ours, x == NODE_AWARE, 1) for x in labels)])
    means = record["mean_time_us"]
    ours = means[NODE_AWARE]
    rows.append(["mean", *(_cell(means[x], ours, x == NODE_AWARE, 2) for x in labels)])
    return header, rows


def compare_times(
    score_tables: Sequence[SubsetTable],
    plan_tables: Sequence[SubsetTable],
    layer_ids: Sequence[int],
    num_gpus: int,
    slots_per_gpu: int,
    *,
    node_aware: Sequence[Placement],
    compute_only: Sequence[Placement],
    compute_only_label: str,
    eplb_global: Sequence[Placement],
    topology: Topology,
    round_us: float,
    num_groups: int | None,
    basis: str,
    note: str,
    cost_model: CostModel | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    served: Sequence[Placement] | None = None,
) -> TimeComparison:
    """Each layer's modeled time with communication on ``score_tables`` (the held-out
    tables when the plan holds tokens out) for the node-aware plan, EPLB hierarchical
    (planned on ``plan_tables``, with ``num_groups`` where EPLB takes that policy), EPLB
    global and the compute-only plan. Decode (no ``batch_size``): one token's exact mean
    time (`expected_time`, ``round_us`` per round); batches: the mean achievable time of a
    fixed sample of batches of ``batch_size`` rows drawn by weight from each score table
    (`sample_batch_time`), the same batches for every placement. ``served``: the
    placement re-planned from (a re-plan's column beside it)."""
    placed: dict[str, Sequence[Placement]] = {NODE_AWARE: node_aware}
    if num_groups is not None:
        hierarchical = [
            eplb_hierarchical(
                t,
                num_gpus,
                slots_per_gpu,
                num_groups=num_groups,
                gpus_per_node=topology.gpus_per_node,
            )
            for t in plan_tables
        ]
        if all(h is not None for h in hierarchical):
            placed[EPLB_HIERARCHICAL] = hierarchical  # type: ignore[assignment]
        else:
            nodes = num_gpus // topology.gpus_per_node
            note += (
                f"; no EPLB hierarchical column: with {num_groups} groups on {nodes} nodes"
                " (not a multiple) EPLB takes its global policy"
            )
    placed[EPLB_GLOBAL] = eplb_global
    placed[compute_only_label] = compute_only
    if served is not None:
        placed[SERVED] = served
    if batch_size is None:
        measure = (
            f"mean time of one token (B = 1), us: {round_us:g} us per expert round plus"
            " dispatch and combine"
        )

        def time_of(table: SubsetTable, p: Placement) -> float:
            return expected_time(table, p, topology, round_us=round_us)

    else:
        assert cost_model is not None
        measure = (
            f"mean achievable layer time of sampled batches of {batch_size} tokens, us:"
            f" busiest GPU's compute ({cost_model!r}) plus dispatch and combine"
        )

        def time_of(table: SubsetTable, p: Placement) -> float:
            return sample_batch_time(
                table,
                p,
                topology=topology,
                cost_model=cost_model,
                batch_size=batch_size,
                seed=seed,
            )

    times = {
        label: [time_of(t, p) for t, p in zip(score_tables, ps, strict=True)]
        for label, ps in placed.items()
    }
    return TimeComparison(list(layer_ids), times, basis, note, measure)
