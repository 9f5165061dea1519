"""The batch-aware placement search on sampled batches, and the fastest of several placements
by simulated step time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import moefast._core as _core
from moefast._core import Placement, SubsetTable
from moefast._util.checks import check_count, check_non_negative, check_placement, check_seed
from moefast.batch.cost_model import CostModel, check_cost_model
from moefast.batch.times import mean_step_time
from moefast.moves import ROUND_US

#: Moves a batch-aware search re-times at most, by default.
DEFAULT_BATCH_EVALUATIONS = 40_000


def optimize_batch(
    table_or_topk: SubsetTable | np.ndarray,
    start_placement: Placement,
    slots_per_gpu: int,
    cost_model: CostModel,
    batch_size: int,
    *,
    seed: int = 0,
    num_batches: int | None = None,
    max_evaluations: int = DEFAULT_BATCH_EVALUATIONS,
    max_moves: int | None = None,
    copy_cost: float | None = None,
    round_us: float = ROUND_US,
) -> Placement:
    """Batch-aware placement of one layer: local search (swap two replicas, turn a
    replica of an expert that has several into one of another expert, move or add a
    replica where a slot is free) from `start_placement`, keeping every move that lowers
    the mean step time of a fixed sample of `num_batches` batches of `batch_size` tokens
    drawn from the trace (default: 8,192 single tokens at B = 1, else about 8,192
    tokens in all, 16 to 512 batches).

    Never worse than `start_placement` on its sample; at most `max_evaluations`
    candidate moves are scored. Deterministic for a given seed.

    With `max_moves`, `start_placement` is the placement being served and the result
    copies at most `max_moves` expert replicas it lacks (`moefast.moves.copies`): each
    step bounds every move the budget allows and makes the one of largest exact gain per
    copy (moves that copy nothing first), until none gains; `max_evaluations` then
    bounds the moves timed exactly. `copy_cost` (expert rounds per token per copy,
    `moefast.moves.price_per_copy`) prices a copy `copy_cost` x `round_us` x
    `batch_size` in the cost model's unit of mean step time (us for the presets): the
    per-token price times the tokens of a step. With it (with or without `max_moves`)
    the walk makes a move only if it lowers the mean step time of the sample by more
    than its copies' price; `copy_cost` 0 or None changes nothing.
    """
    cm = check_cost_model(cost_model)
    start = check_placement(start_placement, "start_placement")
    weights = None
    if isinstance(table_or_topk, SubsetTable):
        topk, weights = table_or_topk.subsets, table_or_topk.weights
    elif isinstance(table_or_topk, (np.ndarray, list, tuple)):
        topk = np.asarray(table_or_topk)
    else:
        raise TypeError(
            "table_or_topk must be a SubsetTable or int expert ids [tokens, k], got"
            f" {type(table_or_topk).__name__}"
        )
    slots_per_gpu = check_count("slots_per_gpu", slots_per_gpu)
    batch_size = check_count("batch_size", batch_size)
    seed = check_seed("seed", seed)
    max_evaluations = check_count("max_evaluations", max_evaluations, low=0)
    if num_batches is not None:
        num_batches = check_count("num_batches", num_batches)
    if max_moves is not None:
        max_moves = check_count("max_moves", max_moves, low=0)
    price = 0.0 if copy_cost is None else check_non_negative("copy_cost", copy_cost)
    step_price = price * check_non_negative("round_us", round_us) * batch_size
    return _core.optimize_batch(
        topk,
        weights,
        start,
        slots_per_gpu,
        cm.alpha,
        cm.beta,
        cm.p,
        batch_size,
        seed,
        num_batches,
        max_evaluations,
        max_moves,
        step_price,
    )


def fastest_placement(
    table: SubsetTable,
    candidates: Sequence[Placement],
    cost_model: CostModel,
    batch_size: int,
    *,
    seed: int = 0,
    steps: int = 256,
) -> Placement:
    """The candidate with the lowest mean step time over `steps` simulated steps of
    `batch_size` tokens drawn from `table` (the first of equals)."""
    if not candidates:
        raise ValueError("candidates is empty")
    if len(candidates) == 1:
        return check_placement(candidates[0], "each candidate")
    return min(
        candidates,
        key=lambda p: mean_step_time(table, p, cost_model, batch_size, seed=seed, steps=steps),
    )


def optimize_batch_sizes(
    table: SubsetTable,
    starts: Sequence[Placement],
    slots_per_gpu: int,
    cost_model: CostModel,
    batch_sizes: Sequence[int],
    *,
    seed: int = 0,
    num_batches: int | None = None,
    max_evaluations: int | Sequence[int] = DEFAULT_BATCH_EVALUATIONS,
) -> list[Placement]:
    """One batch-aware placement per size of ``batch_sizes``, in ascending order of size,
    each searched by `optimize_batch` from the fastest at that size (`fastest_placement`)
    of ``starts`` and the placements found for the smaller sizes: a search for B starts
    where the one for a smaller B ended when that is faster at B, so it needs fewer moves
    than one from the starts alone, and it is never slower on its sample than any of them.
    ``max_evaluations``: one bound for every search, or one per size of ``batch_sizes``
    (in its order)."""
    if not starts:
        raise ValueError("starts is empty: the searches need a placement to start from")
    sizes = [check_count("batch size", b) for b in batch_sizes]
    if isinstance(max_evaluations, (int, np.integer)):
        bounds = [int(max_evaluations)] * len(sizes)
    else:
        bounds = [int(x) for x in max_evaluations]
        if len(bounds) != len(sizes):
            raise ValueError(
                f"{len(bounds)} bounds in max_evaluations for {len(sizes)} batch sizes"
            )
    candidates = [check_placement(p, "each start") for p in starts]
    found: list[Placement] = []
    for b, bound in sorted(zip(sizes, bounds, strict=True)):
        start = fastest_placement(table, candidates, cost_model, b, seed=seed)
        placement = optimize_batch(
            table,
            start,
            slots_per_gpu,
            cost_model,
            b,
            seed=seed,
            num_batches=num_batches,
            max_evaluations=bound,
        )
        found.append(placement)
        candidates.append(placement)
    return found
