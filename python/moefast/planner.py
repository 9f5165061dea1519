"""Planning whole models: one optimized placement per MoE layer, layers in parallel."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Literal

import numpy as np

from moefast._core import Placement, SubsetTable, expected_cost, lower_bound
from moefast.cost_model import CostModel
from moefast.model import ModelPlacement
from moefast.optimizers import check_memory, optimize
from moefast.trace import PathLike, Trace
from moefast.validation import check_number


def _is_paths(obj: object) -> bool:
    if isinstance(obj, (str, os.PathLike)):
        return True
    return (
        isinstance(obj, Sequence)
        and len(obj) > 0
        and all(isinstance(p, (str, os.PathLike)) for p in obj)
    )


def layer_tables(
    trace_or_tables: Trace | Sequence[SubsetTable] | PathLike | Sequence[PathLike],
    *,
    chunk_tokens: int | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
) -> tuple[list[SubsetTable], list[int]]:
    """The subset table and model layer number of every layer of a trace, table list
    (a list's layers are numbered from 0), or trace files (read by streaming,
    `moefast.distributed.tables_from_files`)."""
    if _is_paths(trace_or_tables):
        from moefast.distributed import tables_from_files

        return tables_from_files(
            trace_or_tables,  # type: ignore[arg-type]
            chunk_tokens=chunk_tokens,
            executor=executor,
            progress=progress,
        )
    if isinstance(trace_or_tables, Trace):
        return trace_or_tables.tables(), list(trace_or_tables.layer_ids)
    if isinstance(trace_or_tables, Sequence) and not isinstance(trace_or_tables, (str, bytes)):
        tables = [t for t in trace_or_tables if isinstance(t, SubsetTable)]
        if tables and len(tables) == len(trace_or_tables):
            return tables, list(range(len(tables)))
    raise TypeError(
        "expected a moefast.Trace, a non-empty sequence of SubsetTable (one per layer) or trace"
        " file paths, got"
        f" {type(trace_or_tables).__name__}"
    )


def plan(
    trace_or_tables: Trace | Sequence[SubsetTable] | PathLike | Sequence[PathLike],
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
    chunk_tokens: int | None = None,
    executor: Executor | None = None,
) -> ModelPlacement:
    """Plans every layer of a `Trace` or a sequence of `SubsetTable` (one per layer).

    Tables are pruned to `coverage` for optimizing and each result is evaluated on the
    full table. Layers run in parallel; `progress` shows a bar per layer (default: when
    stderr is a terminal). `method`, `seed`, `time_limit`, `objective`, `batch_size` and
    `cost_model` are `optimize`'s.

    Trace files (one path or many: shards, ranks, Arrow traces) are read by streaming,
    ``chunk_tokens`` tokens at a time, so memory holds the tables, not the trace. With an
    ``executor`` (a process pool, `moefast.distributed.RayExecutor`, Dask's), files are
    counted and layers optimized on its workers; the result is identical.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    tables, layer_ids = layer_tables(
        trace_or_tables, chunk_tokens=chunk_tokens, executor=executor, progress=progress
    )
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

    if executor is not None:
        from moefast.distributed import optimize_layers

        options = dict(
            method=method,
            seed=seed,
            time_limit=time_limit,
            objective=objective,
            batch_size=batch_size,
            cost_model=cost_model,
        )
        results = optimize_layers(
            executor, tables, layer_ids, num_gpus, slots_per_gpu, coverage, options, progress
        )
        return _model(
            results,
            slots_per_gpu,
            layer_ids,
            method,
            coverage,
            seed,
            num_gpus,
            time_limit,
            objective,
            batch_size,
            cost_model,
        )
    workers = min(len(tables), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        layers = pool.map(plan_layer, tables)
        if progress:
            from tqdm import tqdm

            layers = tqdm(layers, total=len(tables), desc="planning layers", unit="layer")
        results = list(layers)
    return _model(
        results,
        slots_per_gpu,
        layer_ids,
        method,
        coverage,
        seed,
        num_gpus,
        time_limit,
        objective,
        batch_size,
        cost_model,
    )


def _model(
    results: Sequence[tuple[Placement, float, float]],
    slots_per_gpu: int,
    layer_ids: list[int],
    method: str,
    coverage: float,
    seed: int,
    num_gpus: int,
    time_limit: float | None,
    objective: str,
    batch_size: int | None,
    cost_model: CostModel | None,
) -> ModelPlacement:
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
