"""GPUs in nodes, the links between them, and layer times with communication (issue 14).

A `Topology` groups GPUs in nodes of `gpus_per_node` and gives each transfer of an
expert-parallel layer (dispatch, combine) a latency and a bandwidth per link class (same
GPU, NVLink inside a node, RDMA between nodes) and the bytes a token sends. The model and
the presets live in the core (`src/topology.rs`); the presets are fitted to DeepEP's
published figures on H800 with 400 Gb/s InfiniBand (deepseek-ai/DeepEP, docs/legacy.md):
low-latency kernel times within 5% at EP 8 to 256, normal-kernel bandwidths within 14%.

With a topology, the time of a token is round_us x (expert rounds of the busiest GPU) plus
dispatch and combine; the replica choice per token is exact (`subset_times`). A batch is
bounded (`batch_time`). `place` improves a placement for that time, or re-plans a served
placement with at most `max_moves` new replicas; `place_batch` improves one for the layer
time of batches of B tokens (compute plus communication) on a fixed sample of batches, and
`place_batch_walk` re-plans a served placement that way with at most `max_moves` copies.
`num_groups` keeps each expert group on one node, as DeepSeek-V3's group-limited routing
assumes (`group_nodes` checks it; `regroup`, `spread_groups` and `eplb_hierarchical` make
placements that keep it, the starts of the grouped searches; `check` says whether a
grouping fits at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moefast import _core
from moefast._core import Placement, SubsetTable
from moefast.cost_model import CostModel
from moefast.replan import CopyPrice, check_copy_cost, check_current
from moefast.validation import check_count, check_non_negative, check_positive, check_seed

#: Time of one expert round in decode (us): a DeepSeek-V3 expert's weight read on an H100
#: (DESIGN 2.2, alpha of 7168x2048), the default when no cost model is given.
V3_ROUND_US = 47.0

PRESETS = ("h800_normal", "h800_low_latency")


@dataclass(frozen=True)
class Transfer:
    """One direction of the exchange: bytes per token copy, and per link class (same GPU,
    NVLink, RDMA) a latency in microseconds and a bandwidth in GB/s (inf: free)."""

    bytes_per_token: float
    latency_us: tuple[float, float, float]
    bandwidth_gb_s: tuple[float, float, float]


def _transfer(t: tuple[float, Sequence[float], Sequence[float]]) -> Transfer:
    bytes_per_token, lat, bw = t
    return Transfer(bytes_per_token, (lat[0], lat[1], lat[2]), (bw[0], bw[1], bw[2]))


@dataclass(frozen=True)
class Topology:
    """GPUs in nodes of `gpus_per_node` (GPU g on node g // gpus_per_node), the dispatch and
    combine transfers, and whether a token is sent once per expert (`per_pair`, DeepEP's
    low-latency kernels) or once per node it reaches (its normal kernels)."""

    gpus_per_node: int
    dispatch: Transfer
    combine: Transfer
    per_pair: bool = False

    @classmethod
    def preset(cls, name: str = "h800_normal", *, gpus_per_node: int = 8) -> Topology:
        """DeepEP's H800 + 400 Gb/s InfiniBand figures: "h800_normal" (one copy per node
        reached) or "h800_low_latency" (one copy per expert)."""
        _, per_pair, d, c = _core.topology_preset(name)
        return cls(
            gpus_per_node=check_count("gpus_per_node", gpus_per_node),
            dispatch=_transfer(d),
            combine=_transfer(c),
            per_pair=per_pair,
        )

    @classmethod
    def free(cls, gpus_per_node: int = 1) -> Topology:
        """No communication cost: times under it are the compute-only costs."""
        free = Transfer(0.0, (0.0, 0.0, 0.0), (np.inf, np.inf, np.inf))
        return cls(check_count("gpus_per_node", gpus_per_node), free, free)

    def as_tuple(self) -> tuple:
        """The form the core takes."""

        def tr(t: Transfer) -> tuple:
            return (float(t.bytes_per_token), list(t.latency_us), list(t.bandwidth_gb_s))

        return (int(self.gpus_per_node), bool(self.per_pair), tr(self.dispatch), tr(self.combine))

    def copy_us(self, expert_bytes: float) -> tuple[float, float]:
        """The time (us) of copying one expert of `expert_bytes` bytes (in node, across
        nodes): over NVLink and over RDMA at the dispatch transfer's bandwidths. Those are
        DeepEP's measured all-to-all bandwidths (153-156 GB/s NVLink, 43-58 GB/s RDMA in
        its README), a conservative figure for one point-to-point copy; the kernel
        latency is left out (33 us beside ~850 us for a 44 MB expert over RDMA)."""
        expert_bytes = check_positive("expert_bytes", expert_bytes)
        bw = self.dispatch.bandwidth_gb_s
        return expert_bytes / (bw[1] * 1e3), expert_bytes / (bw[2] * 1e3)

    def copy_price(
        self, expert_bytes: float, tokens: float, *, round_us: float = V3_ROUND_US
    ) -> CopyPrice:
        """The price of a copy by link (`moefast.replan.CopyPrice`, expert rounds per
        token): `copy_us` spread over the `tokens` this layer serves until the next
        re-plan, in rounds of `round_us`, as `moefast.replan.price_per_copy` prices one
        link."""
        tokens = check_positive("tokens", tokens)
        round_us = check_positive("round_us", round_us)
        in_node, across = self.copy_us(expert_bytes)
        return CopyPrice(in_node / round_us / tokens, across / round_us / tokens)

    def comm_us(self, tokens: int, k: int, node_sum: int, num_gpus: int) -> float:
        """Dispatch + combine time (us) of `tokens` tokens of `k` experts reaching
        `node_sum` nodes in all (summed over tokens) on `num_gpus` GPUs."""
        return _core.topology_comm_us(self.as_tuple(), tokens, k, node_sum, num_gpus)


def subset_times(
    table: SubsetTable, placement: Placement, topology: Topology, *, round_us: float = V3_ROUND_US
) -> np.ndarray:
    """Time (us) of one token of each row of `table`: round_us per expert round of the
    busiest GPU plus dispatch and combine, minimized exactly over the replica choice."""
    return _core.topology_subset_times(table, placement, topology.as_tuple(), float(round_us))


def expected_time(
    table: SubsetTable, placement: Placement, topology: Topology, *, round_us: float = V3_ROUND_US
) -> float:
    """Mean time (us per token) of `table` under the placement and topology."""
    times = subset_times(table, placement, topology, round_us=round_us)
    return float(np.dot(times, table.weights) / table.total_weight)


def batch_time(
    topk: np.ndarray, placement: Placement, topology: Topology, cost_model: CostModel
) -> tuple[float, float]:
    """(achievable time, lower bound) in us of one layer for a batch [tokens, k]: the
    busiest GPU's compute under `cost_model` plus dispatch and combine."""
    return _core.topology_batch_time(
        topk, placement, cost_model.alpha, cost_model.beta, cost_model.p, topology.as_tuple()
    )


def place(
    table: SubsetTable,
    start: Placement,
    slots_per_gpu: int,
    *,
    topology: Topology | None = None,
    round_us: float = V3_ROUND_US,
    max_moves: int | None = None,
    max_evaluations: int = 20_000,
    seed: int = 0,
    target: Placement | None = None,
    num_groups: int | None = None,
    copy_cost: float | CopyPrice | None = None,
) -> tuple[Placement, int]:
    """(placement, replicas moved): `start` improved for the expected token time under
    `topology` (without one: the compute-only cost, round_us = 1), adding at most
    `max_moves` replicas that `start` lacks (each one copy of an expert's weights).
    With `target` (a fresh plan), half the candidate moves bring `start` toward it.
    With `num_groups`, `start` must keep each of `num_groups` groups of consecutive expert
    ids on one node (ValueError naming a stray replica otherwise), and so does the result:
    every move keeps each group on its node. With `copy_cost` (expert rounds per token per
    copy, `moefast.replan.price_per_copy`, or a `CopyPrice` by link), a copy costs
    `copy_cost` x `round_us` (us per token with a topology, so the same number means the
    same as without one): a move is made only if it lowers the expected time by more than
    its copies' price (a move that gives copies back gains theirs), ranked by that net
    gain per copy. Never worse than `start` (in time plus the copies' price)."""
    placement, moved, _ = place_walk(
        table,
        start,
        slots_per_gpu,
        topology=topology,
        round_us=round_us,
        max_moves=max_moves,
        max_evaluations=max_evaluations,
        seed=seed,
        target=target,
        num_groups=num_groups,
        copy_cost=copy_cost,
    )
    return placement, moved


def place_walk(
    table: SubsetTable,
    start: Placement,
    slots_per_gpu: int,
    *,
    topology: Topology | None = None,
    round_us: float = V3_ROUND_US,
    max_moves: int | None = None,
    max_evaluations: int = 20_000,
    seed: int = 0,
    target: Placement | None = None,
    num_groups: int | None = None,
    copy_cost: float | CopyPrice | None = None,
) -> tuple[Placement, int, list[tuple[int, float]]]:
    """`place`, and its search's path: (copies, expected time in us) from `start` after
    each move when re-planning (`max_moves`, `target` or a `copy_cost` given), else
    `start` and the end: the gain against moves of a re-plan. Under a price, a move that
    gives copies back may raise the time (by less than their price)."""
    price = check_copy_cost(copy_cost)
    if topology is None:
        topology, round_us = Topology.free(), 1.0
    if max_moves is not None:
        max_moves = check_count("max_moves", max_moves, low=0)
    return _core.improve_placement(
        table,
        start,
        slots_per_gpu,
        topology.as_tuple(),
        float(round_us),
        max_moves,
        check_count("max_evaluations", max_evaluations, low=0),
        check_seed("seed", seed),
        target,
        None if num_groups is None else check_count("num_groups", num_groups),
        price.us(float(round_us)),
    )


def _default_num_batches(batch_size: int) -> int:
    """The sample `place_batch` searches on (and `sample_batch_time` scores) by default:
    about 8,192 tokens in all, 16 to 128 batches."""
    return min(128, max(16, 8192 // batch_size))


def walk_batches(batch_size: int) -> int:
    """The sample `place_batch_walk` re-plans on by default: four times `place_batch`'s
    (about 32,768 tokens). A walk of few steps, each the best gain per copy of a few
    candidates, fits the noise of a smaller sample: on the V3-size layer of
    benches/bench_replan_topology.py at B = 64, with 8,192 tokens the walk's gain on the
    search's own sample was 2.3x its gain on the validation sample (1.1x with 32,768)."""
    return 4 * _default_num_batches(check_count("batch_size", batch_size))


def place_batch(
    table: SubsetTable,
    starts: Sequence[Placement],
    slots_per_gpu: int,
    *,
    topology: Topology,
    cost_model: CostModel,
    batch_size: int,
    num_batches: int | None = None,
    max_evaluations: int = 2_000,
    seed: int = 0,
    num_groups: int | None = None,
) -> tuple[Placement, float]:
    """(placement, its mean time in us on the sample): a local search for the layer time
    of batches of `batch_size` tokens with communication, on a fixed sample of
    `num_batches` batches of rows of `table` drawn by weight (default about 8,192 tokens
    in all, 16 to 128 batches): GPUs of different nodes trading their experts, swaps of
    replicas off busy GPUs, spare replicas of light experts turned into replicas of heavy
    ones; at most `max_evaluations` steps are scored. A validation sample of as many
    batches (same table, another stream) guards against fitting the sample's noise: the
    start is the best of `starts` on both samples together, and the layout returned is the
    one of the search's path (the start included) best on the validation sample. Never
    worse than that start on either sample. With `num_groups`, every start must keep each
    of `num_groups` groups of consecutive expert ids on one node, and so does the result."""
    if not isinstance(table, SubsetTable):
        raise TypeError(f"table must be a SubsetTable, got {type(table).__name__}")
    starts = list(starts)
    for i, s in enumerate(starts):
        if not isinstance(s, Placement):
            raise TypeError(f"starts[{i}] must be a Placement, got {type(s).__name__}")
    batch_size = check_count("batch_size", batch_size)
    if num_batches is None:
        num_batches = _default_num_batches(batch_size)
    return _core.improve_batch_placement(
        table,
        starts,
        check_count("slots_per_gpu", slots_per_gpu),
        cost_model.alpha,
        cost_model.beta,
        cost_model.p,
        topology.as_tuple(),
        batch_size,
        check_count("num_batches", num_batches),
        check_seed("seed", seed),
        check_count("max_evaluations", max_evaluations, low=0),
        None if num_groups is None else check_count("num_groups", num_groups),
    )


def place_batch_walk(
    table: SubsetTable,
    current: Placement,
    slots_per_gpu: int,
    *,
    topology: Topology,
    cost_model: CostModel,
    batch_size: int,
    max_moves: int | None = None,
    copy_price: float | None = None,
    target: Placement | None = None,
    num_batches: int | None = None,
    max_evaluations: int = 2_000,
    seed: int = 0,
    num_groups: int | None = None,
) -> tuple[Placement, float, int, list[tuple[int, float]]]:
    """(placement, its mean time in us on the sample, copies, path): `current` (the
    placement being served) re-planned by `place_batch`'s search, from `current` alone,
    with at most `max_moves` copies (replicas of the result that `current` lacks on
    their GPU, `moefast.replan.copies`; dropping is free). A step is made only if it
    lowers the sample's mean time by more than `copy_price` us per copy it adds, and of
    the improving steps the one of largest gain per copy is made (steps that copy nothing
    or give copies back first). With `target` (a fresh plan, relabelled to `current`:
    `moefast.replan.relabel(current, plan, topology.gpus_per_node)`), half the candidate
    steps bring one of its replicas to its GPU. The sample: `num_batches` batches
    (default `walk_batches`, four times `place_batch`'s). The path: (copies, sample mean time)
    after each step made, `current` first: the gain against moves. The validation
    sample keeps the layout of the path best there (its copies priced), so the result is
    never worse than `current` on the sample; with `max_moves=0` it is `current`. With
    `num_groups`, `current` must keep each group on one node, and every step keeps it."""
    if not isinstance(table, SubsetTable):
        raise TypeError(f"table must be a SubsetTable, got {type(table).__name__}")
    slots_per_gpu = check_count("slots_per_gpu", slots_per_gpu)
    if not isinstance(current, Placement):
        raise TypeError(f"current must be a moefast.Placement, got {type(current).__name__}")
    check_current(current, table.num_experts, current.num_gpus, slots_per_gpu)
    if target is not None and not isinstance(target, Placement):
        raise TypeError(f"target must be a moefast.Placement, got {type(target).__name__}")
    if max_moves is not None:
        max_moves = check_count("max_moves", max_moves, low=0)
    price = 0.0 if copy_price is None else check_non_negative("copy_price", copy_price)
    batch_size = check_count("batch_size", batch_size)
    if num_batches is None:
        num_batches = walk_batches(batch_size)
    placement, mean, moved, path = _core.replan_batch_placement(
        table,
        current,
        slots_per_gpu,
        cost_model.alpha,
        cost_model.beta,
        cost_model.p,
        topology.as_tuple(),
        batch_size,
        check_count("num_batches", num_batches),
        check_seed("seed", seed),
        check_count("max_evaluations", max_evaluations, low=0),
        max_moves,
        price,
        target,
        None if num_groups is None else check_count("num_groups", num_groups),
    )
    return placement, float(mean), int(moved), [(int(c), float(t)) for c, t in path]


def sample_batch_time(
    table: SubsetTable,
    placement: Placement,
    *,
    topology: Topology,
    cost_model: CostModel,
    batch_size: int,
    num_batches: int | None = None,
    seed: int = 0,
    validation: bool = False,
) -> float:
    """Mean achievable layer time (us) of `placement` on the sample `place_batch` draws
    with the same `batch_size`, `num_batches` and `seed` (`validation`: on its validation
    sample)."""
    batch_size = check_count("batch_size", batch_size)
    if num_batches is None:
        num_batches = _default_num_batches(batch_size)
    _, mean = _core.improve_batch_placement(
        table,
        [placement],
        1,
        cost_model.alpha,
        cost_model.beta,
        cost_model.p,
        topology.as_tuple(),
        batch_size,
        check_count("num_batches", num_batches),
        check_seed("seed", seed),
        0,
        None,
        True,
        bool(validation),
    )
    return float(mean)


def group_nodes(placement: Placement, num_groups: int, gpus_per_node: int) -> list[int]:
    """The node of each of `num_groups` groups of consecutive expert ids when every
    replica of a group is on one node (DeepSeek-V3's assumption for group-limited routing:
    a token's top groups then reach at most that many nodes); ValueError naming the first
    replica off its group's node otherwise."""
    return _core.topology_group_nodes(placement, num_groups, gpus_per_node)


def check(
    topology: Topology,
    num_experts: int,
    num_gpus: int,
    slots_per_gpu: int,
    num_groups: int | None = None,
) -> None:
    """ValueError unless `topology` fits `num_gpus` GPUs (whole nodes) and, with
    `num_groups`, the groups can each live on one node: `num_groups` divides the experts,
    the groups spread evenly over the nodes fit in a node's slots, and a node has at least
    as many experts as a GPU's slots (its GPUs hold distinct experts)."""
    if not isinstance(topology, Topology):
        raise TypeError(
            f"topology must be a moefast.topology.Topology, got {type(topology).__name__}"
        )
    _core.topology_check(
        topology.as_tuple(),
        check_count("num_experts", num_experts),
        check_count("num_gpus", num_gpus),
        check_count("slots_per_gpu", slots_per_gpu),
        None if num_groups is None else check_count("num_groups", num_groups),
    )


def regroup(
    table: SubsetTable,
    placement: Placement,
    slots_per_gpu: int,
    *,
    num_groups: int,
    topology: Topology,
    round_us: float = V3_ROUND_US,
) -> Placement:
    """`placement` (say, the compute-only greedy's) made to keep each of `num_groups` groups
    of consecutive expert ids on one node of `topology`: groups go to nodes by the table's
    tokens (the communication of the nodes a token reaches against `round_us` per round
    lost when its experts crowd one node: two experts of a node share a GPU with chance 1 /
    GPUs per node), each replica keeps its GPU's index inside the node, and free slots get
    replicas of the node's heaviest experts. Every GPU is full. ValueError when the grouping
    cannot fit (`check`)."""
    return _core.topology_regroup(
        table, placement, slots_per_gpu, topology.as_tuple(), float(round_us), num_groups
    )


def spread_groups(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    *,
    num_groups: int,
    topology: Topology,
    round_us: float = V3_ROUND_US,
) -> Placement:
    """A placement that keeps each of `num_groups` groups on one node, from the table alone:
    groups on nodes as in `regroup`, each node's experts (heaviest first) on the node's GPU
    where they are co-activated least with the experts already there (at most
    ceil(experts / GPUs) each), free slots filled with the node's heaviest experts."""
    return _core.topology_spread_groups(
        table, num_gpus, slots_per_gpu, topology.as_tuple(), float(round_us), num_groups
    )


def eplb_hierarchical(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    *,
    num_groups: int,
    gpus_per_node: int,
) -> Placement | None:
    """DeepSeek EPLB's hierarchical placement of the table's load (groups packed onto
    nodes, then replicas onto each node's GPUs; a GPU's repeated replicas merged and the
    freed slots filled with its node's heaviest experts), or None where EPLB takes its
    global policy (`num_groups` not a multiple of the nodes)."""
    return _core.topology_eplb_hierarchical(
        table, num_gpus, slots_per_gpu, gpus_per_node, num_groups
    )
