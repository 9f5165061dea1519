"""Planning traces larger than memory, on one machine or fanned out on an executor.

`tables_from_files` builds one `SubsetTable` per layer from many trace files: locally by
streaming chunk by chunk, or on a `concurrent.futures.Executor` (a process pool, Ray through
`RayExecutor`, Dask's ``client.get_executor()``) where each task counts one file or one range
of an Arrow file's record batches into per-layer partial tables that are merged here, in
the core. `optimize_layers` optimizes the layers on the executor. Tables travel as numpy
buffers (uint16 ids, float64 weights), placements as bool matrices, so nothing but arrays
is pickled; the results are identical to the single-process plan.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import Placement, SubsetTable
from moefast._util.checks import check_count
from moefast._util.progress import progress as progress_bar
from moefast.io.readers.arrow import ArrowTrace, is_arrow_trace
from moefast.io.streaming import (
    DEFAULT_CHUNK_TOKENS,
    FileCounts,
    SubsetTableBuilder,
    TraceShape,
    count_file,
    table_from_arrays,
    table_to_arrays,
    trace_files,
    trace_shape,
)
from moefast.moves import Replan
from moefast.planning.layer import plan_one_layer, replan_layer
from moefast.trace import PathLike

#: Record batches of an Arrow file counted by one task of an executor.
BATCHES_PER_TASK = 8

TableArrays = tuple[np.ndarray, np.ndarray, int]


@dataclass(frozen=True)
class CountTask:
    """One file, or a range of an Arrow file's record batches, to count on a worker."""

    path: Path
    batches: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.batches is None:
            return str(self.path)
        return f"{self.path} (record batches {self.batches[0]}..{self.batches[1] - 1})"


def count_tasks(files: Sequence[Path]) -> list[CountTask]:
    tasks = []
    for path in files:
        if is_arrow_trace(path):
            n = ArrowTrace.open(path).num_batches
            tasks += [
                CountTask(path, (b, min(b + BATCHES_PER_TASK, n)))
                for b in range(0, n, BATCHES_PER_TASK)
            ]
        else:
            tasks.append(CountTask(path))
    return tasks


def count_task(
    task: CountTask,
    shape: TraceShape,
    chunk_tokens: int,
    options: dict[str, Any],
    holdout: float | None = None,
) -> tuple[tuple[int, list[TableArrays]], tuple[int, list[TableArrays]] | None]:
    """Runs on a worker: the tokens and partial tables of every layer of the task (train,
    and with ``holdout`` the held-out tail's), as arrays."""
    positions = range(len(shape.layer_ids))
    counts = count_file(task.path, positions, chunk_tokens, shape, task.batches, holdout, **options)
    train = (counts.train[0].tokens, _arrays(counts.train))
    return train, None if counts.test is None else (counts.test[0].tokens, _arrays(counts.test))


def _arrays(builders: Sequence[SubsetTableBuilder]) -> list[TableArrays]:
    return [table_to_arrays(b.finish()) if b.tokens else _NO_TABLE for b in builders]


#: A task's layer that counted no tokens (a record-batch range wholly in the test tail).
_NO_TABLE: TableArrays = (np.zeros((0, 0), np.uint16), np.zeros(0), 0)


def _result(future: Future, what: str) -> Any:
    """The future's result; a worker's failure names what it held."""
    try:
        return future.result()
    except ValueError:
        raise  # bad input, already named by the reader
    except Exception as err:
        raise RuntimeError(f"the worker {what} failed: {type(err).__name__}: {err}") from err


def _returned(result: Any, what: str, expected: str, convert: Callable[[Any], Any]) -> Any:
    """``convert(result)``, or a TypeError saying which worker returned what, when its
    result is not of the ``expected`` form (an executor whose futures return None, ...)."""
    try:
        return convert(result)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        raise TypeError(
            f"the worker {what} returned {type(result).__name__}, not {expected} ({err});"
            " is the executor's future the function's result?"
        ) from err


def check_executor(executor: Executor) -> None:
    """Refuses what is not an executor (no ``submit``), and process pools that fork: a
    child forked after the core's thread pool started inherits its locks but not its
    threads, and waits forever."""
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(
            "executor must be a concurrent.futures.Executor (an object with submit()), got"
            f" {type(executor).__name__}"
        )
    if isinstance(executor, ProcessPoolExecutor):
        context = getattr(executor, "_mp_context", None)
        if context is not None and context.get_start_method() == "fork":
            raise ValueError(
                "executor: a ProcessPoolExecutor that forks deadlocks in the core's thread pool;"
                " use ProcessPoolExecutor(mp_context=multiprocessing.get_context('spawn'))"
            )


@dataclass
class StreamedTables:
    """Per-layer tables of trace files: the tokens planned on (``train``) and, with a
    holdout, the last tokens of each file (``test``, None without)."""

    train: list[SubsetTable]
    test: list[SubsetTable] | None
    layer_ids: list[int]
    num_files: int
    #: (train, test) tokens counted
    tokens: tuple[int, int]


def _add(builders: Sequence[SubsetTableBuilder], part: tuple[int, list[TableArrays]]) -> None:
    tokens, arrays = part
    if not tokens:
        return
    for builder, table in zip(builders, arrays, strict=True):
        builder.add_table(table_from_arrays(table), tokens)


def stream_split_tables(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    chunk_tokens: int | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
    holdout: float | None = None,
    **options: Any,
) -> StreamedTables:
    """One table per layer of the trace in the files, built by streaming (memory holds the
    tables and a chunk, not the trace); with ``holdout``, the last `held_out_tokens` of each
    file are counted into separate test tables (a split by time, file by file). With an
    ``executor``, files (and ranges of Arrow record batches) are counted on its workers."""
    chunk_tokens = check_count(
        "chunk_tokens", DEFAULT_CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
    )
    files = trace_files(path_or_paths)
    shape = trace_shape(files[0], **options)
    counts = FileCounts.empty(shape.num_experts, len(shape.layer_ids), holdout)
    if executor is None:
        positions = range(len(shape.layer_ids))
        shown = (
            progress_bar(files, len(files), "counting files") if progress is not False else files
        )
        for path in shown:
            count_file(path, positions, chunk_tokens, shape, None, holdout, counts, **options)
    else:
        check_executor(executor)
        tasks = count_tasks(files)
        futures = {
            executor.submit(count_task, task, shape, chunk_tokens, dict(options), holdout): task
            for task in tasks
        }
        try:
            done: Iterable[Future] = as_completed(futures)
            if progress is not False:
                done = progress_bar(done, len(futures), "counting files")
            for future in done:
                what = f"counting {futures[future]}"

                def add(result: Any) -> None:
                    train, test = result
                    _add(counts.train, train)
                    if counts.test is not None:
                        _add(counts.test, test)

                _returned(_result(future, what), what, "(train, test) tables", add)
        finally:
            for future in futures:
                future.cancel()
    test = None
    if counts.test is not None and counts.test[0].tokens:
        test = [b.finish() for b in counts.test]
    return StreamedTables(
        [b.finish() for b in counts.train], test, list(shape.layer_ids), len(files), counts.tokens
    )


def tables_from_files(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    chunk_tokens: int | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
    **options: Any,
) -> tuple[list[SubsetTable], list[int]]:
    """One table per layer of all the tokens in the files, and the layers' ids, built by
    streaming (`stream_split_tables` without holdout)."""
    streamed = stream_split_tables(
        path_or_paths, chunk_tokens=chunk_tokens, executor=executor, progress=progress, **options
    )
    return streamed.train, streamed.layer_ids


def plan_layer(
    arrays: TableArrays,
    num_gpus: int,
    slots_per_gpu: int,
    method: str,
    estimator: Any,
    seed: int,
    work_budget: int | None,
    options: dict[str, Any],
) -> np.ndarray:
    """Runs on a worker: one layer planned as `moefast.planning.plan.plan_layers` plans it
    (`plan_one_layer`); the placement as a bool matrix [E, G]."""

    placement = plan_one_layer(
        table_from_arrays(arrays),
        num_gpus,
        slots_per_gpu,
        method,
        estimator,
        seed,
        work_budget=work_budget,
        **options,
    )
    return placement.replicas


def optimize_layers(
    executor: Executor,
    tables: Sequence[SubsetTable],
    layer_ids: Sequence[int],
    num_gpus: int,
    slots_per_gpu: int,
    method: str,
    estimator: Any,
    seed: int,
    work_budget: int | None,
    options: dict[str, Any],
    progress: bool | None = None,
) -> list[Placement]:
    """`plan_layers`' placements, each layer optimized on a worker of ``executor``
    (``work_budget`` shared equally between the layers, as `plan_layers` does)."""
    check_executor(executor)
    share = None if work_budget is None else work_budget // len(tables)
    futures = {
        executor.submit(
            plan_layer,
            table_to_arrays(t),
            num_gpus,
            slots_per_gpu,
            method,
            estimator,
            seed,
            share,
            options,
        ): i
        for i, t in enumerate(tables)
    }
    results: list[Placement | None] = [None] * len(tables)
    try:
        done: Iterable[Future] = as_completed(futures)
        if progress is not False:
            done = progress_bar(done, len(futures), "planning layers")
        for future in done:
            i = futures[future]
            what = f"planning layer {layer_ids[i]}"
            results[i] = _returned(_result(future, what), what, "a bool matrix [E, G]", Placement)
    finally:
        for future in futures:
            future.cancel()
    return [r for r in results if r is not None]


def replan_layer_task(
    arrays: TableArrays,
    current: np.ndarray,
    num_gpus: int,
    slots_per_gpu: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Runs on a worker: one layer re-planned (`moefast.planning.layer.replan_layer`) from the
    served placement's bool matrix; placements come back as bool matrices."""

    found = replan_layer(
        table_from_arrays(arrays), Placement(current), num_gpus, slots_per_gpu, **options
    )
    fields = {f.name: getattr(found, f.name) for f in dataclasses.fields(found)}
    for name in _PLACEMENT_FIELDS:
        p = fields[name]
        fields[name] = None if p is None else p.replicas
    return fields


_PLACEMENT_FIELDS = ("placement", "full", "compute_only")


def _replan(fields: dict[str, Any]) -> Replan:
    """A re-plan from the fields a worker sent back (placements as bool matrices)."""
    fields = dict(fields)
    for name in _PLACEMENT_FIELDS:
        if fields[name] is not None:
            fields[name] = Placement(fields[name])
    fields["path"] = tuple((int(c), float(x)) for c, x in fields["path"])
    return Replan(**fields)


def replan_on(
    executor: Executor,
    tables: Sequence[SubsetTable],
    currents: Sequence[Placement],
    layer_ids: Sequence[int],
    num_gpus: int,
    slots_per_gpu: int,
    options: dict[str, Any],
) -> list[Any]:
    """`moefast.planning.replan.replan_layers`' re-plans, each layer on a worker of ``executor``."""

    check_executor(executor)
    futures = {
        executor.submit(
            replan_layer_task,
            table_to_arrays(t),
            c.replicas,
            num_gpus,
            slots_per_gpu,
            options,
        ): i
        for i, (t, c) in enumerate(zip(tables, currents, strict=True))
    }
    results: list[Replan | None] = [None] * len(tables)
    try:
        for future in as_completed(futures):
            i = futures[future]
            what = f"re-planning layer {layer_ids[i]}"
            results[i] = _returned(_result(future, what), what, "a re-plan's fields", _replan)
    finally:
        for future in futures:
            future.cancel()
    return [r for r in results if r is not None]


class RayExecutor(Executor):
    """A `concurrent.futures.Executor` running each call as a Ray task (``pip install
    'moefast[ray]'``). ``address`` None or ``"local"`` starts a local cluster of
    ``num_workers`` CPUs (default: all), ``"auto"`` or ``"ray://host:10001"`` joins a running
    one; moefast must be installed on every node. Each task asks Ray for one CPU."""

    def __init__(self, address: str | None = None, num_workers: int | None = None) -> None:
        try:
            import ray
        except ImportError as err:
            raise ImportError("the Ray executor needs ray: pip install 'moefast[ray]'") from err
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            local = address in (None, "local")
            ray.init(
                address=None if local else address,
                num_cpus=num_workers if local else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        self._remote: dict[Callable[..., Any], Any] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=1, max_retries=0)(fn)
        return remote.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def default_workers() -> int:
    return os.cpu_count() or 1
