"""Batches of tokens (DESIGN 2.2): the step time of one MoE layer for a batch, and
simulated decode steps over a routing trace.

Times are in the units of the cost model (microseconds for the presets and fits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from moefast import _core
from moefast._core import Placement, SubsetTable
from moefast.cost_model import CostModel
from moefast.model import ModelPlacement
from moefast.replan import ROUND_US
from moefast.trace import Trace
from moefast.validation import check_count, check_ints, check_non_negative, check_seed

__all__ = ["CostModel", "batch_time", "fastest_placement", "optimize_batch", "simulate"]


def _cost_model(cost_model: object) -> CostModel:
    if not isinstance(cost_model, CostModel):
        raise TypeError(f"cost_model must be a moefast.CostModel, got {type(cost_model).__name__}")
    return cost_model


def _placement(placement: object, name: str = "placement") -> Placement:
    if not isinstance(placement, Placement):
        raise TypeError(f"{name} must be a moefast.Placement, got {type(placement).__name__}")
    return placement


def batch_time(
    topk_batch: Any, placement: Placement, cost_model: CostModel, *, return_bound: bool = False
) -> float | tuple[float, float]:
    """Time of one MoE layer for a batch: int array [tokens, k] of expert ids.

    Every token-expert pair is served by one replica of its expert, chosen to minimize
    the time of the busiest GPU. Exact when beta = 0 or alpha = 0, otherwise the best
    assignment a search finds (never below the optimum). With `return_bound`, returns
    (time, lower_bound): no assignment is faster than lower_bound.
    """
    cm = _cost_model(cost_model)
    time, bound = _core.batch_time(
        topk_batch, _placement(placement), cm.alpha, cm.beta, cm.p, return_bound
    )
    if not return_bound:
        return time
    assert bound is not None  # the core computes the bound when asked for it
    return time, bound


#: What `simulate` draws tokens from: a trace, one layer's table, one table per layer, or ids.
Routing = Trace | SubsetTable | Sequence[SubsetTable] | np.ndarray


def _placements(placement: object) -> list[Placement]:
    if isinstance(placement, Placement):
        return [placement]
    if isinstance(placement, ModelPlacement):
        return list(placement.placements)
    if isinstance(placement, (list, tuple)):
        return [_placement(p, "each placement") for p in placement]
    raise TypeError(
        f"placement must be a Placement or a ModelPlacement, got {type(placement).__name__}"
    )


def _layer_sources(routing: object) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """What each layer's tokens are drawn from: (topk [rows, layers, k], row weights or None).

    One entry for a trace or an id array (the same tokens in every layer), one per table
    for a sequence of tables (each layer drawn from its own table).
    """
    if isinstance(routing, Trace):
        return [(routing.topk, routing.weights)]
    if isinstance(routing, SubsetTable):
        return [(routing.subsets[:, None, :], routing.weights)]
    if isinstance(routing, (list, tuple)) and routing and isinstance(routing[0], SubsetTable):
        for i, table in enumerate(routing):
            if not isinstance(table, SubsetTable):
                raise TypeError(f"table {i} must be a SubsetTable, got {type(table).__name__}")
        return [(t.subsets[:, None, :], t.weights) for t in routing]
    if not isinstance(routing, (np.ndarray, list, tuple)):
        raise TypeError(
            "expected a moefast.Trace, a SubsetTable, a sequence of SubsetTable or an int array"
            f" of expert ids, got {type(routing).__name__}"
        )
    topk = np.asarray(routing)
    if topk.ndim == 2:
        topk = topk[:, None, :]
    elif topk.ndim != 3:
        raise ValueError(
            "expert ids must be [tokens, k] (one layer) or [tokens, layers, k],"
            f" got shape {topk.shape}"
        )
    return [(topk, None)]


def simulate(
    trace_or_topk: Routing,
    placement: Placement | ModelPlacement | Sequence[Placement],
    batch_sizes: int | Sequence[int],
    cost_model: CostModel,
    *,
    seed: int = 0,
    steps: int = 1000,
) -> list[dict[str, float]]:
    """Simulated decode steps: each step draws `batch_size` tokens (with replacement)
    from the trace and times every MoE layer with `batch_time`.

    trace_or_topk: a `Trace` with a ModelPlacement (the same tokens in every layer; a
    model's step time is the sum of its layer times); a `SubsetTable` (rows drawn with
    probability proportional to their weight) with a Placement; a sequence of
    `SubsetTable`, one per layer, with a ModelPlacement (each layer's tokens drawn from
    its own table); or int expert ids, [tokens, k] with a Placement or
    [tokens, layers, k] with a ModelPlacement.

    Returns one dict per batch size: batch_size, mean/p50/p99_step_time (time of one
    decode step), throughput (tokens per unit of time: batch_size / mean step time) and
    latency_per_token (the mean step time: each token of the batch waits one whole step
    for its next token). Deterministic for a given seed.
    """
    cm = _cost_model(cost_model)
    sources = _layer_sources(trace_or_topk)
    placements = _placements(placement)
    layers = sum(topk.shape[1] for topk, _ in sources)
    if layers != len(placements):
        raise ValueError(f"the trace has {layers} layers but the placement has {len(placements)}")
    if any(topk.shape[0] == 0 for topk, _ in sources):
        raise ValueError("the trace has no tokens to draw from")
    sizes = check_ints("batch_sizes", batch_sizes, low=1)
    steps = check_count("steps", steps)
    seed = check_seed("seed", seed)
    per_source, first = [], 0
    for topk, weights in sources:
        layer_placements = placements[first : first + topk.shape[1]]
        first += topk.shape[1]
        per_source.append(
            _core.simulate_steps(
                topk, weights, layer_placements, sizes, cm.alpha, cm.beta, cm.p, seed, steps
            )
        )
    times = np.sum(per_source, axis=0)  # step times float [len(sizes), steps]
    results = []
    for b, row in zip(sizes, times, strict=True):
        mean = float(row.mean())
        results.append(
            {
                "batch_size": b,
                "mean_step_time": mean,
                "p50_step_time": float(np.percentile(row, 50)),
                "p99_step_time": float(np.percentile(row, 99)),
                "throughput": b / mean if mean > 0 else float("inf"),
                "latency_per_token": mean,
            }
        )
    return results


def optimize_batch(
    table_or_topk: SubsetTable | np.ndarray,
    start_placement: Placement,
    slots_per_gpu: int,
    cost_model: CostModel,
    batch_size: int,
    *,
    seed: int = 0,
    num_batches: int | None = None,
    max_evaluations: int = 40_000,
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
    copies at most `max_moves` expert replicas it lacks (`moefast.replan.copies`): each
    step bounds every move the budget allows and makes the one of largest exact gain per
    copy (moves that copy nothing first), until none gains; `max_evaluations` then
    bounds the moves timed exactly. `copy_cost` (expert rounds per token per copy,
    `moefast.replan.price_per_copy`) prices a copy `copy_cost` x `round_us` x
    `batch_size` in the cost model's unit of mean step time (us for the presets): the
    per-token price times the tokens of a step. With it (with or without `max_moves`)
    the walk makes a move only if it lowers the mean step time of the sample by more
    than its copies' price; `copy_cost` 0 or None changes nothing.
    """
    cm = _cost_model(cost_model)
    start = _placement(start_placement, "start_placement")
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


def mean_step_time(
    table: SubsetTable,
    placement: Placement,
    cost_model: CostModel,
    batch_size: int,
    *,
    seed: int = 0,
    steps: int = 256,
) -> float:
    """Mean step time of `placement` over `steps` simulated steps of `batch_size` tokens
    drawn from `table` (the same steps for every placement with the same seed)."""
    (result,) = simulate(table, placement, [batch_size], cost_model, seed=seed, steps=steps)
    return float(result["mean_step_time"])


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
        return _placement(candidates[0], "each candidate")
    return min(
        candidates,
        key=lambda p: mean_step_time(table, p, cost_model, batch_size, seed=seed, steps=steps),
    )
