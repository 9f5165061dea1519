"""Batches of tokens (DESIGN 2.2): the step time of one MoE layer for a batch, and
simulated decode steps over a routing trace.

Times are in the units of the cost model (microseconds for the presets and fits).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from moefast import _core
from moefast._core import Placement, SubsetTable
from moefast.cost_model import CostModel
from moefast.model import ModelPlacement
from moefast.validation import check_count, check_ints, check_seed

__all__ = ["CostModel", "batch_time", "optimize_batch", "simulate"]


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
    return (time, bound) if return_bound else time


def _layers(
    trace_or_topk: Any, placement: Any
) -> tuple[np.ndarray, np.ndarray | None, list[Placement]]:
    """(topk [tokens, layers, k], row weights or None, one placement per layer)."""
    weights = None
    if isinstance(trace_or_topk, SubsetTable):
        topk = trace_or_topk.subsets[:, None, :]
        weights = trace_or_topk.weights
    else:
        source = getattr(trace_or_topk, "topk", trace_or_topk)
        topk = np.asarray(source)
        if topk.ndim == 2:
            topk = topk[:, None, :]
        elif topk.ndim != 3:
            raise ValueError(
                f"trace_or_topk must be [tokens, k] (one layer) or [tokens, layers, k], got shape {topk.shape}"
            )
    if isinstance(placement, Placement):
        placements = [placement]
    elif isinstance(placement, ModelPlacement):
        placements = list(placement.placements)
    elif isinstance(placement, (list, tuple)):
        placements = [_placement(p, "each placement") for p in placement]
    else:
        raise TypeError(
            f"placement must be a Placement or a ModelPlacement, got {type(placement).__name__}"
        )
    if topk.shape[1] != len(placements):
        raise ValueError(
            f"the trace has {topk.shape[1]} layers but the placement has {len(placements)}"
        )
    if topk.shape[0] == 0:
        raise ValueError("the trace has no tokens to draw from")
    return topk, weights, placements


def simulate(
    trace_or_topk: Any,
    placement: Placement | ModelPlacement,
    batch_sizes: int | Sequence[int],
    cost_model: CostModel,
    seed: int = 0,
    steps: int = 1000,
) -> list[dict[str, float]]:
    """Simulated decode steps: each step draws `batch_size` tokens (with replacement)
    from the trace and times every MoE layer with `batch_time`.

    trace_or_topk: one layer ([tokens, k] ids or a SubsetTable, whose rows are drawn with
    probability proportional to their weight) with a Placement, or a whole model
    ([tokens, layers, k] ids or an object with a `.topk` attribute) with a ModelPlacement;
    a model's step time is the sum of its layer times, the same tokens in every layer.

    Returns one dict per batch size: batch_size, mean/p50/p99_step_time (time of one
    decode step), throughput (tokens per unit of time: batch_size / mean step time) and
    latency_per_token (the mean step time: each token of the batch waits one whole step
    for its next token). Deterministic for a given seed.
    """
    cm = _cost_model(cost_model)
    topk, weights, placements = _layers(trace_or_topk, placement)
    sizes = check_ints("batch_sizes", batch_sizes, low=1)
    steps = check_count("steps", steps)
    seed = check_seed("seed", seed)
    times = _core.simulate_steps(
        topk, weights, placements, sizes, cm.alpha, cm.beta, cm.p, seed, steps
    )
    results = []
    for b, row in zip(sizes, times):
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
    table_or_topk: SubsetTable | Any,
    start_placement: Placement,
    slots_per_gpu: int,
    cost_model: CostModel,
    batch_size: int,
    seed: int = 0,
    num_batches: int | None = None,
    max_evaluations: int = 40_000,
) -> Placement:
    """Batch-aware placement of one layer: local search (swap two replicas, turn a
    replica of an expert that has several into one of another expert, move or add a
    replica where a slot is free) from `start_placement`, keeping every move that lowers
    the mean step time of a fixed sample of `num_batches` batches of `batch_size` tokens
    drawn from the trace (default: 8,192 single tokens at B = 1, else about 2,048
    tokens in all, 16 to 512 batches).

    Never worse than `start_placement` on its sample; at most `max_evaluations`
    candidate moves are scored. Deterministic for a given seed.
    """
    cm = _cost_model(cost_model)
    start = _placement(start_placement, "start_placement")
    weights = None
    if isinstance(table_or_topk, SubsetTable):
        topk, weights = table_or_topk.subsets, table_or_topk.weights
    else:
        topk = np.asarray(getattr(table_or_topk, "topk", table_or_topk))
    slots_per_gpu = check_count("slots_per_gpu", slots_per_gpu)
    batch_size = check_count("batch_size", batch_size)
    seed = check_seed("seed", seed)
    max_evaluations = check_count("max_evaluations", max_evaluations, low=0)
    if num_batches is not None:
        num_batches = check_count("num_batches", num_batches)
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
    )
