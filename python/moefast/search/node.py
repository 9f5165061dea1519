"""The node-aware searches: GPUs trading nodes and replica moves scored with communication, for
decode and for batches, and their re-planning walks; expert groups kept on nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import moefast._core as _core
from moefast._core import Placement, SubsetTable
from moefast._util.checks import check_count, check_non_negative, check_seed
from moefast.batch.cost_model import CostModel
from moefast.moves import ROUND_US, CopyPrice, check_copy_cost, check_current
from moefast.topology.times import (
    Topology,
    batch_search_options,
    default_num_batches,
    walk_batches,
)


def place(
    table: SubsetTable,
    start: Placement,
    slots_per_gpu: int,
    *,
    topology: Topology | None = None,
    round_us: float = ROUND_US,
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
    copy, `moefast.moves.price_per_copy`, or a `CopyPrice` by link), a copy costs
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
    round_us: float = ROUND_US,
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
        num_batches = default_num_batches(batch_size)
    options = batch_search_options(
        slots_per_gpu=check_count("slots_per_gpu", slots_per_gpu),
        topology=topology,
        cost_model=cost_model,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        max_evaluations=max_evaluations,
        num_groups=num_groups,
    )
    return _core.improve_batch_placement(table, starts, options)


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
    their GPU, `moefast.moves.copies`; dropping is free). A step is made only if it
    lowers the sample's mean time by more than `copy_price` us per copy it adds, and of
    the improving steps the one of largest gain per copy is made (steps that copy nothing
    or give copies back first). With `target` (a fresh plan, relabelled to `current`:
    `moefast.moves.relabel(current, plan, topology.gpus_per_node)`), half the candidate
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
    options = batch_search_options(
        slots_per_gpu=slots_per_gpu,
        topology=topology,
        cost_model=cost_model,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        max_evaluations=max_evaluations,
        num_groups=num_groups,
    )
    placement, mean, moved, path = _core.replan_batch_placement(
        table, current, options, max_moves, price, target
    )
    return placement, float(mean), int(moved), [(int(c), float(t)) for c, t in path]


def regroup(
    table: SubsetTable,
    placement: Placement,
    slots_per_gpu: int,
    *,
    num_groups: int,
    topology: Topology,
    round_us: float = ROUND_US,
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
    round_us: float = ROUND_US,
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
