"""Batches of tokens (docs/cost-model.md#a-batch): the step time of one MoE layer for a batch, and
simulated decode steps over a routing trace.

Times are in the units of the cost model (microseconds for the presets and fits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import moefast._core as _core
from moefast._core import Placement, SubsetTable
from moefast._util.checks import check_count, check_ints, check_placement, check_seed
from moefast.batch.cost_model import CostModel, check_cost_model
from moefast.io.engines.dispatch import check_dispatch, dispatch_maps
from moefast.placement import ModelPlacement
from moefast.trace import Trace

__all__ = ["batch_time", "mean_step_time", "simulate"]


def batch_time(
    topk_batch: Any, placement: Placement, cost_model: CostModel, *, return_bound: bool = False
) -> float | tuple[float, float]:
    """Time of one MoE layer for a batch: int array [tokens, k] of expert ids.

    Every token-expert pair is served by one replica of its expert, chosen to minimize
    the time of the busiest GPU. Exact when beta = 0 or alpha = 0, otherwise the best
    assignment a search finds (never below the optimum). With `return_bound`, returns
    (time, lower_bound): no assignment is faster than lower_bound.
    """
    cm = check_cost_model(cost_model)
    time, bound = _core.batch_time(
        topk_batch, check_placement(placement), cm.alpha, cm.beta, cm.p, return_bound
    )
    if not return_bound:
        return time
    assert bound is not None  # the core computes the bound when asked for it
    return time, bound


def batch_split(
    counts: Any, placement: Placement, cost_model: CostModel
) -> tuple[float, np.ndarray]:
    """The split behind `batch_time` for a batch given by its token count per expert (int
    [E]): (step time, int [E, G] tokens each expert serves on each GPU). Sending each
    expert's tokens to its GPUs in these numbers runs the batch in that time."""
    cm = check_cost_model(cost_model)
    time, split = _core.batch_split(counts, check_placement(placement), cm.alpha, cm.beta, cm.p)
    return time, split.astype(np.int64)


#: What `simulate` draws tokens from: a trace, one layer's table, one table per layer, or ids.
Routing = Trace | SubsetTable | Sequence[SubsetTable] | np.ndarray


def _placements(placement: object) -> list[Placement]:
    if isinstance(placement, Placement):
        return [placement]
    if isinstance(placement, ModelPlacement):
        return list(placement.placements)
    if isinstance(placement, (list, tuple)):
        return [check_placement(p, "each placement") for p in placement]
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


def step_times(
    trace_or_topk: Routing,
    placement: Placement | ModelPlacement | Sequence[Placement],
    batch_sizes: int | Sequence[int],
    cost_model: CostModel,
    *,
    seed: int = 0,
    steps: int = 1000,
    dispatch: str = "best",
    maps: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """float [len(batch_sizes), steps]: the time of every simulated step `simulate` sums
    up, for paired comparisons of placements (the same seed draws the same steps).
    ``maps``: the dispatch's maps of these placements when the caller has drawn them
    (`moefast.io.engines.dispatch.dispatch_maps`)."""
    cm = check_cost_model(cost_model)
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
    dispatch = check_dispatch(dispatch)
    # An engine file's map keeps its repeated slots, which the static rules count.
    slots = placement.slots if isinstance(placement, ModelPlacement) else None
    if dispatch == "best":
        maps = None
    elif maps is None:
        maps = dispatch_maps(placements, dispatch, slots)
    per_source, first = [], 0
    for topk, weights in sources:
        layer_placements = placements[first : first + topk.shape[1]]
        if maps is None:
            times = _core.simulate_steps(
                topk, weights, layer_placements, sizes, cm.alpha, cm.beta, cm.p, seed, steps
            )
        else:
            layer_maps = maps[first : first + topk.shape[1]]
            times = _core.simulate_dispatch_steps(
                topk,
                weights,
                layer_placements,
                layer_maps,
                sizes,
                cm.alpha,
                cm.beta,
                cm.p,
                seed,
                steps,
                round_robin=dispatch == "trtllm",
            )
        first += topk.shape[1]
        per_source.append(times)
    return np.sum(per_source, axis=0)


def simulate(
    trace_or_topk: Routing,
    placement: Placement | ModelPlacement | Sequence[Placement],
    batch_sizes: int | Sequence[int],
    cost_model: CostModel,
    *,
    seed: int = 0,
    steps: int = 1000,
    dispatch: str = "best",
) -> list[dict[str, float]]:
    """Simulated decode steps: each step draws `batch_size` tokens (with replacement)
    from the trace and times every MoE layer with `batch_time`.

    dispatch: which replica serves each (token, expert) pair (docs/cost-model.md#dispatch):
    "best" (the batch's best routing, `batch_time`), "sglang-static" (SGLang's map per
    source rank, token j of a step on rank (offset + j) mod G), "sglang-dynamic" (a
    uniform draw per pair), "vllm-ascend" (replica rank % count) or "trtllm" (the same map,
    exact for batches of at most G tokens, one per rank; refused above); the same batches
    are drawn for every dispatch.

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
    sizes = check_ints("batch_sizes", batch_sizes, low=1)
    times = step_times(
        trace_or_topk, placement, sizes, cost_model, seed=seed, steps=steps, dispatch=dispatch
    )
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


def mean_step_time(
    table: SubsetTable,
    placement: Placement,
    cost_model: CostModel,
    batch_size: int,
    *,
    seed: int = 0,
    steps: int = 256,
    dispatch: str = "best",
) -> float:
    """Mean step time of `placement` over `steps` simulated steps of `batch_size` tokens
    drawn from `table` (the same steps for every placement with the same seed) under
    ``dispatch`` (see `simulate`)."""
    (result,) = simulate(
        table, placement, [batch_size], cost_model, seed=seed, steps=steps, dispatch=dispatch
    )
    return float(result["mean_step_time"])
