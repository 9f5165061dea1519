"""Re-planning with few moves (issue 14): from the placement an engine serves, a placement
for a new workload that copies few expert weights.

What counts as a move: one **copy**, an expert's weights sent to a GPU slot, i.e. a
replica of the new placement that the current one does not hold on that GPU. Dropping a
replica is free. Replacing an expert in a slot by another, or relocating a replica to
another GPU, is one copy; swapping two experts between two GPUs is two; a move that puts
back a replica the current placement holds there gives a copy back. The budget
(`max_moves`) is per layer. `copies(current, placement)` counts them.

How (the core's `src/replan.rs`): the full re-plan is relabelled (GPU labels are free for
the decode cost) to share the most replicas with the current placement, by an exact
assignment; if it fits the budget it is a candidate as it is. A greedy walks from the
current placement, each step making the improving move of largest exact gain per copy
(moves toward the relabelled re-plan, co-activation swaps, replica reassignments), until
the budget is spent or nothing improves. Its path gives the gain against moves.

`copy_cost` prices a copy instead of (or beside) a hard budget: a move is made only if it
lowers the expected cost by more than its copies' price. `price_per_copy` turns an
expert's bytes, the link bandwidth and the tokens served until the next re-plan into that
price, in expert rounds per token. The same number means the same with a topology, where
times are us per token: the node-aware walk prices a copy `copy_cost` x `round_us` us per
token, and `Topology.copy_price` gives a `CopyPrice` by link (NVLink inside a node, RDMA
across). For batches (`objective="batch"`), a copy costs `copy_cost` x `round_us` x
`batch_size` us of mean step time: the per-token price times the tokens of a step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from moefast import _core
from moefast._core import Placement, SubsetTable
from moefast.validation import check_count, check_non_negative, check_positive

if TYPE_CHECKING:
    from moefast.cost_model import CostModel
    from moefast.topology import Topology

#: Time of one expert round in decode (us), the default of `price_per_copy`: a
#: DeepSeek-V3 expert's weight read on an H100 (`moefast.topology.V3_ROUND_US`).
ROUND_US = 47.0


@dataclass(frozen=True)
class Replan:
    """One layer re-planned: the placement, its copies and expected cost (rounds per
    token, on the table re-planned for), the current placement's cost, the walk as
    (copies, cost) points from the current placement, and the full re-plan (relabelled),
    its copies and cost when one was given."""

    placement: Placement
    copies: int
    cost: float
    stale_cost: float
    path: tuple[tuple[int, float], ...]
    full: Placement | None = None
    full_copies: int | None = None
    full_cost: float | None = None
    #: With a topology: the compute-only plan the node-aware re-plan started from.
    compute_only: Placement | None = None

    def cost_within(self, moves: int) -> float:
        """The lowest cost this re-plan found with at most `moves` copies: a point of the
        walk, or the full re-plan when it fits."""
        costs = [cost for copies, cost in self.path if copies <= moves]
        full = self.full_copies, self.full_cost
        if full[0] is not None and full[1] is not None and full[0] <= moves:
            costs.append(full[1])
        if self.copies <= moves:
            costs.append(self.cost)
        return min(costs)

    def share_of_full_gain(self, cost: float) -> float | None:
        """(stale - cost) / (stale - full re-plan): the share of a full re-plan's gain a
        placement of this cost recovers; None without a full re-plan or when it gains
        nothing."""
        if self.full_cost is None or self.stale_cost - self.full_cost <= 0:
            return None
        return (self.stale_cost - cost) / (self.stale_cost - self.full_cost)


def price_per_copy(
    expert_bytes: float, bandwidth_gb_s: float, tokens: float, *, round_us: float = ROUND_US
) -> float:
    """The price of one copy in expert rounds per token: the copy's time
    (expert_bytes / bandwidth) spread over the `tokens` this layer serves until the next
    re-plan, in rounds of `round_us` microseconds. A DeepSeek-V3 expert in FP8 is about
    44 MB; 50 GB/s RDMA copies it in ~0.9 ms. The same price serves the node-aware
    re-plan (a copy costs price x `round_us` us per token there; `Topology.copy_price`
    prices by link) and batches (price x `round_us` x `batch_size` us per step)."""
    expert_bytes = check_positive("expert_bytes", expert_bytes)
    bandwidth_gb_s = check_positive("bandwidth_gb_s", bandwidth_gb_s)
    tokens = check_positive("tokens", tokens)
    round_us = check_positive("round_us", round_us)
    copy_us = expert_bytes / (bandwidth_gb_s * 1e3)
    return copy_us / round_us / tokens


@dataclass(frozen=True)
class CopyPrice:
    """The price of one copy in expert rounds per token, by the link the copy crosses
    (with a topology): `in_node` when the served placement holds the expert on another
    GPU of the destination's node (an NVLink copy), `across_nodes` otherwise (RDMA).
    `moefast.topology.Topology.copy_price` makes one from an expert's bytes; a float
    `copy_cost` is one price for both."""

    in_node: float
    across_nodes: float

    def __post_init__(self) -> None:
        for name in ("in_node", "across_nodes"):
            value = check_non_negative(f"copy_cost.{name}", getattr(self, name))
            object.__setattr__(self, name, value)

    def us(self, round_us: float) -> tuple[float, float]:
        """(in node, across nodes) in us per token: the prices times `round_us`."""
        return self.in_node * round_us, self.across_nodes * round_us


def check_copy_cost(copy_cost: float | CopyPrice | None) -> CopyPrice:
    """`copy_cost` as a `CopyPrice` (None: free; a float, finite and >= 0: one price)."""
    if isinstance(copy_cost, CopyPrice):
        return copy_cost
    price = 0.0 if copy_cost is None else check_non_negative("copy_cost", copy_cost)
    return CopyPrice(price, price)


def copies_price(
    current: Placement, placement: Placement, price: CopyPrice, gpus_per_node: int
) -> float:
    """The price (rounds per token) of the copies that turn `current` into `placement`,
    each by its link (`CopyPrice`)."""
    held = current.replicas
    added = placement.replicas & ~held
    nodes = held.reshape(held.shape[0], -1, gpus_per_node).any(axis=2)
    in_node = np.repeat(nodes, gpus_per_node, axis=1)
    return float(
        price.in_node * (added & in_node).sum() + price.across_nodes * (added & ~in_node).sum()
    )


def copies(current: Placement, placement: Placement) -> int:
    """Replicas of `placement` that `current` lacks on their GPU: the weight copies that
    turn the current placement into it."""
    _check_placement("current", current)
    _check_placement("placement", placement)
    return _core.replica_copies(current, placement)


def relabel(current: Placement, target: Placement, gpus_per_node: int = 1) -> Placement:
    """`target` with its GPUs renamed to share the most replicas with `current` (exact).
    With `gpus_per_node` > 1, only nodes and GPUs inside a node are renamed, so times with
    communication are kept too."""
    _check_placement("current", current)
    _check_placement("target", target)
    return _core.relabel_gpus(current, target, gpus_per_node)


def _check_placement(name: str, p: object) -> None:
    if not isinstance(p, Placement):
        raise TypeError(f"{name} must be a moefast.Placement, got {type(p).__name__}")


def check_current(current: object, num_experts: int, num_gpus: int, slots_per_gpu: int) -> None:
    """The served placement must be a Placement of `num_experts` experts (the table's) on
    `num_gpus` GPUs with at most `slots_per_gpu` experts on each."""
    _check_placement("current", current)
    assert isinstance(current, Placement)
    if current.num_gpus != num_gpus:
        raise ValueError(f"current has {current.num_gpus} GPUs, not num_gpus = {num_gpus}")
    if current.num_experts != num_experts:
        raise ValueError(
            f"current has {current.num_experts} experts, not the trace's {num_experts}"
        )
    used = np.asarray(current.slots_used)
    if used.max() > slots_per_gpu:
        g = int(np.argmax(used))
        raise ValueError(
            f"current puts {int(used[g])} experts on GPU {g}, more than"
            f" slots_per_gpu = {slots_per_gpu}"
        )


def _check_full(current: Placement, slots_per_gpu: int) -> None:
    """The node-aware search keeps every GPU full, and starts full."""
    used = np.asarray(current.slots_used)
    if (used != slots_per_gpu).any():
        g = int(np.argmax(used != slots_per_gpu))
        raise ValueError(
            f"current puts {int(used[g])} experts on GPU {g}: re-planning with a topology"
            f" needs every GPU full (slots_per_gpu = {slots_per_gpu})"
        )


def check_move_limits(
    max_moves: int | None, copy_cost: float | CopyPrice | None
) -> tuple[int | None, float]:
    """`max_moves` (an int >= 0 or None) and `copy_cost` (finite, >= 0; None is 0) as one
    price: a `CopyPrice` must price both links alike (its links need a topology)."""
    if max_moves is not None:
        max_moves = check_count("max_moves", max_moves, low=0)
    price = check_copy_cost(copy_cost)
    if price.in_node != price.across_nodes:
        raise ValueError(
            "a CopyPrice by link (in_node != across_nodes) needs topology=: without one a"
            " copy has one price"
        )
    return max_moves, price.in_node


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
    _check_placement("current", current)
    check_current(current, table.num_experts, current.num_gpus, slots_per_gpu)
    if target is not None:
        _check_placement("target", target)
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
    walk from `current` (`moefast.batch.optimize_batch(max_moves=, copy_cost=)`), the full
    batch plan `fresh` relabelled to share the most replicas with `current` (when it fits
    the budget) and `current` itself; the one of least simulated step time plus its
    copies' price (`copy_cost` x `round_us` x `batch_size` us per copy) is kept. Costs are
    mean step times (us) of 256 simulated steps drawn from `table`, the same steps for
    every candidate; the path has the walk's end only (its intermediate placements are
    not kept)."""
    from moefast.batch import mean_step_time, optimize_batch

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
    node-aware re-plan of `moefast.topology_plan.replan_node_aware` from that compute-only
    plan, measured against the full node-aware plan (`node_aware_decode`) as `plan`
    without `current` would make it; `copy_cost` (rounds per token per copy, or a
    `CopyPrice` by link) prices a copy `copy_cost` x `round_us` us per token there. With a
    topology and ``objective="batch"``, costs are us per step of ``batch_size`` tokens on
    the walk's sample: `moefast.topology_plan.replan_node_aware_batch` walks toward the
    full node-aware batch plan (`node_aware_batch` from the compute-only batch plan), a
    copy priced ``copy_cost`` x ``round_us`` x ``batch_size`` us of step time."""
    from moefast.optimizers import optimize
    from moefast.topology_plan import (
        node_aware_batch,
        node_aware_decode,
        replan_node_aware,
        replan_node_aware_batch,
    )

    if coverage < 1.0:
        table = table.prune(coverage=coverage)
    fresh = optimize(table, num_gpus, slots_per_gpu, method=method, seed=seed, **optimize_options)
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
    workers of ``executor`` (`moefast.distributed.replan_on`; the same results).
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
                _check_full(c, slots_per_gpu)
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
        from moefast.distributed import replan_on

        return replan_on(executor, tables, currents, ids, num_gpus, slots_per_gpu, options)

    def one(table: SubsetTable, current: Placement) -> Replan:
        return replan_layer(table, current, num_gpus, slots_per_gpu, **options)

    workers = max(1, min(len(tables), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, tables, currents))


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
    from moefast.batch import mean_step_time
    from moefast.topology import expected_time, sample_batch_time

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
