"""Planning whole models: one optimized placement per MoE layer, layers in parallel."""

from __future__ import annotations

import itertools
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from moefast._core import SubsetTable, expected_cost, lower_bound
from moefast.model import ModelPlacement
from moefast.optimizers import check_budgets, check_memory, optimize


def layer_tables(trace_or_tables: Any) -> tuple[list[SubsetTable], list[int]]:
    """The subset table and model layer number of every layer of a trace or table list."""
    if hasattr(trace_or_tables, "topk") and hasattr(trace_or_tables, "num_experts"):
        trace = trace_or_tables
        topk = np.asarray(trace.topk)
        if topk.ndim != 3:
            raise ValueError(f"a trace's topk must be [tokens, layers, k], got shape {topk.shape}")
        weights = getattr(trace, "weights", None)
        tables = [
            SubsetTable.from_topk(topk[:, layer, :], trace.num_experts, weights=weights)
            for layer in range(topk.shape[1])
        ]
        layer_ids = getattr(trace, "layer_ids", None)
        if layer_ids is None:
            layer_ids = range(len(tables))
        return tables, [int(i) for i in layer_ids]
    tables = list(trace_or_tables)
    if not tables or not all(isinstance(t, SubsetTable) for t in tables):
        raise TypeError("plan needs a Trace or a non-empty sequence of SubsetTable, one per layer")
    return tables, list(range(len(tables)))


def plan(
    trace_or_tables: Any,
    num_gpus: int,
    slots_per_gpu: int,
    method: str = "greedy",
    coverage: float = 0.99,
    seed: int = 0,
    progress: bool | None = None,
    time_budget: float | None = None,
    work_budget: int | None = None,
    **options: Any,
) -> ModelPlacement:
    """Plans every layer: tables are pruned to `coverage` for optimizing and each result
    is evaluated on the full table. Layers run in parallel; `progress` shows a bar per
    layer (default: when stderr is a terminal). Other options go to `optimize`.

    `time_budget` (seconds, for the whole plan) gives each layer, when it starts, its share
    of the time left; `work_budget` (rows read by exact evaluations, for the whole plan)
    gives each layer an equal share, and keeps the plan deterministic for a given seed."""
    tables, layer_ids = layer_tables(trace_or_tables)
    check_memory(tables[0].num_experts, num_gpus, slots_per_gpu)
    # `coverage < 1.0` below would quietly plan on the full table for 2 or NaN.
    if isinstance(coverage, bool) or not isinstance(
        coverage, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"coverage must be a number, got {type(coverage).__name__}")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    if {t.num_experts for t in tables} != {tables[0].num_experts}:
        raise ValueError("all layers must have the same number of experts")

    time_budget, work_budget = check_budgets(time_budget, work_budget)
    workers = min(len(tables), os.cpu_count() or 1)
    deadline = None if time_budget is None else time.perf_counter() + time_budget
    started = itertools.count()  # next() on it is atomic in CPython

    def layer_budget() -> float | None:
        if deadline is None:
            return None
        left = len(tables) - next(started)  # layers not started yet, this one included
        return max(0.0, (deadline - time.perf_counter()) * min(workers, left) / left)

    def plan_layer(table: SubsetTable):
        budget = layer_budget()
        pruned = table.prune(coverage=coverage) if coverage < 1.0 else table
        placement = optimize(
            pruned,
            num_gpus,
            slots_per_gpu,
            method=method,
            seed=seed,
            time_budget=budget,
            work_budget=None if work_budget is None else work_budget // len(tables),
            **options,
        )
        return placement, expected_cost(table, placement), lower_bound(table, num_gpus)

    if progress is None:
        progress = sys.stderr.isatty()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(plan_layer, tables)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(tables), desc="planning layers", unit="layer")
        results = list(results)
    return ModelPlacement(
        placements=[r[0] for r in results],
        slots_per_gpu=slots_per_gpu,
        layer_ids=layer_ids,
        layer_costs=np.array([r[1] for r in results]),
        lower_bounds=np.array([r[2] for r in results]),
        settings={
            "method": method,
            "coverage": coverage,
            "seed": seed,
            "num_gpus": num_gpus,
            **({"time_budget": time_budget} if time_budget is not None else {}),
            **({"work_budget": work_budget} if work_budget is not None else {}),
            # Files keep settings as JSON: a cost model is recorded by its repr.
            **{
                k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
                for k, v in options.items()
            },
        },
    )
