"""Planning whole models: one optimized placement per MoE layer, layers in parallel, scored
on tokens the plan has not seen (`moefast.heldout`) when the trace has enough of them."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from moefast._core import Placement, SubsetTable
from moefast.comparison import BASELINES, Comparison, compare_methods
from moefast.estimators import shrunk_table
from moefast.heldout import baseline_placements, choose_split, score_methods
from moefast.model import ModelPlacement
from moefast.optimizers import check_memory, optimize
from moefast.selection import Estimator, select_estimator
from moefast.trace import Trace

ESTIMATOR_CHOICES = ("auto", "plain")


def layer_tables(trace_or_tables: Any) -> tuple[list[SubsetTable], list[int]]:
    """The subset table and model layer number of every layer of a trace or table list."""
    trace = as_trace(trace_or_tables)
    if trace is not None:
        return trace.tables(), list(trace.layer_ids)
    tables = list(trace_or_tables)
    if not tables or not all(isinstance(t, SubsetTable) for t in tables):
        raise TypeError("plan needs a Trace or a non-empty sequence of SubsetTable, one per layer")
    return tables, list(range(len(tables)))


def as_trace(value: Any) -> Trace | None:
    """A `Trace` for trace-like objects (``topk`` and ``num_experts``), None for table lists."""
    if isinstance(value, Trace):
        return value
    if hasattr(value, "topk") and hasattr(value, "num_experts"):
        return Trace(
            np.asarray(value.topk),
            value.num_experts,
            getattr(value, "layer_ids", None) or [],
            getattr(value, "weights", None),
            getattr(value, "request_ids", None),
        )
    return None


def plan_layers(
    tables: Sequence[SubsetTable],
    num_gpus: int,
    slots_per_gpu: int,
    method: str = "greedy",
    estimator: Estimator = Estimator(),
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> list[Placement]:
    """One placement per table, planned on the table the estimator makes of it."""

    def plan_layer(table: SubsetTable) -> Placement:
        if estimator.shrink > 0:
            table = shrunk_table(table, estimator.shrink, seed=seed)
        if estimator.coverage < 1.0:
            table = table.prune(coverage=estimator.coverage)
        return optimize(table, num_gpus, slots_per_gpu, method=method, seed=seed, **options)

    workers = min(len(tables), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(plan_layer, tables)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(tables), desc="planning layers", unit="layer")
        return list(results)


def _check_coverage(coverage: Any) -> None:
    # `coverage < 1.0` would quietly plan on the full table for 2 or NaN.
    if isinstance(coverage, bool) or not isinstance(
        coverage, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"coverage must be a number, got {type(coverage).__name__}")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")


def plan(
    trace_or_tables: Any,
    num_gpus: int,
    slots_per_gpu: int,
    method: str = "greedy",
    coverage: float = 0.99,
    seed: int = 0,
    progress: bool | None = None,
    holdout: float | None = 0.2,
    split_by: str | None = None,
    estimator: str = "auto",
    **options: Any,
) -> ModelPlacement:
    """Plans every layer and scores it, with the baselines, on tokens it has not seen.

    With a trace of at least `moefast.heldout.MIN_HOLDOUT_TOKENS` tokens, ``holdout`` of them
    (by ``split_by``: "time" or "request"; default by request when the trace knows enough
    requests) are held out: the placements are planned on the rest and ``layer_costs`` are
    held-out costs of the returned placement on the held-out tokens. Otherwise (or with
    ``holdout=0``) costs are in-sample; ``settings["cost_basis"]`` and
    ``settings["cost_note"]`` say which and why, and ``evaluation`` holds the comparison
    with the baselines and the bootstrap 95% interval of the gain. ``estimator="auto"``
    picks the table to plan on by cross-validation on the train part (`moefast.selection`),
    ``"plain"`` plans on the empirical table pruned to ``coverage``. Layers run in parallel;
    ``progress`` shows a bar (default: when stderr is a terminal). Other options go to
    `optimize`."""
    tables, layer_ids = layer_tables(trace_or_tables)
    trace = as_trace(trace_or_tables)
    check_memory(tables[0].num_experts, num_gpus, slots_per_gpu)
    _check_coverage(coverage)
    if estimator not in ESTIMATOR_CHOICES:
        raise ValueError(f"estimator must be one of {ESTIMATOR_CHOICES}, got {estimator!r}")
    if {t.num_experts for t in tables} != {tables[0].num_experts}:
        raise ValueError("all layers must have the same number of experts")
    if progress is None:
        progress = sys.stderr.isatty()

    split = choose_split(trace, holdout, split_by, seed)
    plan_trace = split.train if split.train is not None else trace
    plan_tables = plan_trace.tables() if plan_trace is not None else tables

    def planner(layer_tables: Sequence[SubsetTable], chosen: Estimator) -> list[Placement]:
        return plan_layers(
            layer_tables, num_gpus, slots_per_gpu, method, chosen, seed, False, **options
        )

    chosen, estimator_note = Estimator(0.0, coverage), f"plain table (coverage {coverage:g})"
    if estimator == "auto" and plan_trace is not None and method == "greedy" and not options:
        by = split_by or ("request" if plan_trace.request_ids is not None else "time")
        selection = select_estimator(plan_trace, planner, coverage, by, seed)
        chosen, estimator_note = selection.estimator, selection.note
    placements = plan_layers(
        plan_tables, num_gpus, slots_per_gpu, method, chosen, seed, progress, **options
    )
    comparison = _score(
        trace,
        split,
        tables,
        plan_tables,
        layer_ids,
        placements,
        num_gpus,
        slots_per_gpu,
        method,
        seed,
    )
    interval = comparison.gain_interval
    return ModelPlacement(
        placements=placements,
        slots_per_gpu=slots_per_gpu,
        layer_ids=layer_ids,
        layer_costs=comparison.costs[method],
        lower_bounds=comparison.lower_bounds,
        settings={
            "method": method,
            "coverage": coverage,
            "seed": seed,
            "num_gpus": num_gpus,
            "cost_basis": comparison.basis,
            "cost_note": comparison.note,
            "estimator": estimator_note,
            "gain_vs_best_baseline": comparison.total_gain() if comparison.baselines else None,
            "gain_interval_95": None if interval is None else list(interval),
            # Files keep settings as JSON: a cost model is recorded by its repr.
            **{
                k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
                for k, v in options.items()
            },
        },
        evaluation=comparison,
    )


def _score(
    trace: Trace | None,
    split: Any,
    tables: list[SubsetTable],
    plan_tables: list[SubsetTable],
    layer_ids: list[int],
    placements: list[Placement],
    num_gpus: int,
    slots_per_gpu: int,
    method: str,
    seed: int,
) -> Comparison:
    """The comparison with the baselines: held-out on the test part when there is one."""
    baselines = [m for m in BASELINES if m != method]
    if trace is None:  # tables only: in-sample, no tokens to bootstrap
        return compare_methods(
            tables,
            layer_ids,
            num_gpus,
            slots_per_gpu,
            main={method: placements},
            methods=baselines,
            seed=seed,
            note=split.note,
        )
    placed = baseline_placements(plan_tables, num_gpus, slots_per_gpu, baselines, seed)
    placed = {method: placements, **placed}
    if split.held_out:
        return score_methods(split.test, placed, num_gpus, method, "held-out", split.note, seed)
    note = f"planned and scored on all {trace.num_tokens} tokens ({split.note})"
    return score_methods(trace, placed, num_gpus, method, "in-sample", note, seed)
