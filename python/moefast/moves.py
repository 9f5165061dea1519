"""Re-planning with few moves: from the placement an engine serves, a placement
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

import moefast._core as _core
from moefast._core import Placement
from moefast._util.checks import check_count, check_non_negative, check_placement, check_positive

#: Time of one expert round in decode (us): a DeepSeek-V3 expert's weight read on an H100
#: (docs/cost-model.md, alpha of 7168x2048). The default of `price_per_copy` and of every
#: time with communication when no cost model is given.
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
    `moefast.topology.times.Topology.copy_price` makes one from an expert's bytes; a float
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


class LayerPlacements(Protocol):
    """A model's placements by layer (`moefast.ModelPlacement`, read here through this
    Protocol: it is defined in a layer above)."""

    placements: list[Placement]
    layer_ids: list[int]


@dataclass(frozen=True)
class MoveBudget:
    """Re-planning from the placement being served, ``current``: one layer's `Placement`
    (`moefast.optimize`), or a model's (`moefast.plan`: a `ModelPlacement`, matched by layer
    id, or one `Placement` per layer). At most ``max_moves`` copies per layer, and/or only
    moves that gain more than ``copy_cost`` (expert rounds per token per copy, or a
    `CopyPrice` by link with a topology) per copy; neither: the full re-plan, relabelled to
    copy the fewest weights."""

    current: Placement | LayerPlacements | Sequence[Placement]
    max_moves: int | None = None
    copy_cost: float | CopyPrice | None = None

    def __post_init__(self) -> None:
        current = self.current
        layers = getattr(current, "placements", current)
        one_layer = isinstance(current, Placement)
        if not one_layer and (
            isinstance(layers, (str, bytes))
            or not isinstance(layers, Sequence)
            or not layers
            or not all(isinstance(p, Placement) for p in layers)
        ):
            raise TypeError(
                "current must be a moefast.Placement (one layer), a ModelPlacement or a"
                f" sequence of Placement (one per layer), got {type(current).__name__}"
            )
        if self.max_moves is not None:
            object.__setattr__(self, "max_moves", check_count("max_moves", self.max_moves, low=0))
        check_copy_cost(self.copy_cost)


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
    check_placement(current, "current")
    check_placement(placement, "placement")
    return _core.replica_copies(current, placement)


def relabel(current: Placement, target: Placement, gpus_per_node: int = 1) -> Placement:
    """`target` with its GPUs renamed to share the most replicas with `current` (exact).
    With `gpus_per_node` > 1, only nodes and GPUs inside a node are renamed, so times with
    communication are kept too."""
    check_placement(current, "current")
    check_placement(target, "target")
    return _core.relabel_gpus(current, target, gpus_per_node)


def check_current(current: object, num_experts: int, num_gpus: int, slots_per_gpu: int) -> None:
    """The served placement must be a Placement of `num_experts` experts (the table's) on
    `num_gpus` GPUs with at most `slots_per_gpu` experts on each."""
    check_placement(current, "current")
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


def check_full(current: Placement, slots_per_gpu: int) -> None:
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
