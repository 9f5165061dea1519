"""Planning whole models: one optimized placement per MoE layer, layers in parallel."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Literal

import numpy as np

from moefast import _core
from moefast._core import Placement, SubsetTable, expected_cost, lower_bound
from moefast.cost_model import CostModel
from moefast.model import ModelPlacement
from moefast.optimizers import check_memory, optimize
from moefast.trace import Trace
from moefast.validation import check_number


def layer_tables(
    trace_or_tables: Trace | Sequence[SubsetTable],
) -> tuple[list[SubsetTable], list[int]]:
    """The subset table and model layer number of every layer of a trace or table list
    (a list's layers are numbered from 0)."""
    if isinstance(trace_or_tables, Trace):
        return trace_or_tables.tables(), list(trace_or_tables.layer_ids)
    if isinstance(trace_or_tables, Sequence) and not isinstance(trace_or_tables, (str, bytes)):
        tables = list(trace_or_tables)
        if tables and all(isinstance(t, SubsetTable) for t in tables):
            return tables, list(range(len(tables)))
    raise TypeError(
        "expected a moefast.Trace or a non-empty sequence of SubsetTable (one per layer), got"
        f" {type(trace_or_tables).__name__}"
    )


def plan(
    trace_or_tables: Trace | Sequence[SubsetTable],
    num_gpus: int,
    slots_per_gpu: int,
    *,
    method: str = "greedy",
    coverage: float = 0.99,
    seed: int = 0,
    progress: bool | None = None,
    time_limit: float | None = None,
    objective: Literal["decode", "batch"] = "decode",
    batch_size: int | None = None,
    cost_model: CostModel | None = None,
) -> ModelPlacement:
    """Plans every layer of a `Trace` or a sequence of `SubsetTable` (one per layer).

    Tables are pruned to `coverage` for optimizing and each result is evaluated on the
    full table. Layers run in parallel; `progress` shows a bar per layer (default: when
    stderr is a terminal). `method`, `seed`, `time_limit`, `objective`, `batch_size` and
    `cost_model` are `optimize`'s.
    """
    tables, layer_ids = layer_tables(trace_or_tables)
    check_memory(tables[0].num_experts, num_gpus, slots_per_gpu)
    # `coverage < 1.0` below would quietly plan on the full table for 2 or NaN.
    coverage = check_number("coverage", coverage)
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    if {t.num_experts for t in tables} != {tables[0].num_experts}:
        raise ValueError("all layers must have the same number of experts")

    def plan_layer(table: SubsetTable) -> tuple[Placement, float, float]:
        pruned = table.prune(coverage=coverage) if coverage < 1.0 else table
        placement = optimize(
            pruned,
            num_gpus,
            slots_per_gpu,
            method=method,
            seed=seed,
            time_limit=time_limit,
            objective=objective,
            batch_size=batch_size,
            cost_model=cost_model,
        )
        return placement, expected_cost(table, placement), lower_bound(table, num_gpus)

    if progress is None:
        progress = sys.stderr.isatty()
    workers = min(len(tables), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(plan_layer, table) for table in tables]
        try:
            layers = (f.result() for f in futures)
            if progress:
                from tqdm import tqdm

                layers = tqdm(layers, total=len(tables), desc="planning layers", unit="layer")
            results = list(layers)
        except KeyboardInterrupt:
            _stop(futures)
            raise
    settings: dict[str, object] = {
        "method": method,
        "coverage": coverage,
        "seed": seed,
        "num_gpus": num_gpus,
    }
    if time_limit is not None:
        settings["time_limit"] = time_limit
    if objective == "batch":
        # Files keep settings as JSON: a cost model is recorded by its repr.
        settings.update(objective=objective, batch_size=batch_size, cost_model=repr(cost_model))
    return ModelPlacement(
        placements=[r[0] for r in results],
        slots_per_gpu=slots_per_gpu,
        layer_ids=layer_ids,
        layer_costs=np.array([r[1] for r in results]),
        lower_bounds=np.array([r[2] for r in results]),
        settings=settings,
    )


def _stop(futures: list[Future]) -> None:
    """After Ctrl-C: drop the layers not started and stop the running ones, whose core
    calls would otherwise run to their end before the pool lets the program exit (signals
    reach the main thread only)."""
    for f in futures:
        f.cancel()
    while not all(f.done() for f in futures):
        _core.interrupt()
        wait(futures, timeout=0.02)
