"""Traces larger than memory: tables built chunk by chunk, traces read chunk by chunk, and
the native chunked format (Arrow IPC).

`SubsetTableBuilder` counts a layer's tokens chunk by chunk into partial tables and merges
them in the core (`SubsetTable.merge`), so the result is the table `SubsetTable.from_topk`
gives over all the tokens at once, row for row, while memory holds tables, not ids.
`iter_trace` reads any trace moefast reads as a sequence of `Trace` chunks; `stream_tables`
turns files into one table per layer; `convert` writes the Arrow IPC format.

Why Arrow IPC: its record batches are memory-mapped and turn into numpy arrays without a
copy, so a pass over one layer of a 50 GB trace reads that layer's bytes only and holds one
batch at a time; the format is a stable, language-neutral spec read by pyarrow, polars,
DuckDB and Spark, and pyarrow is a single binary wheel on every platform. It is an optional
extra (``moefast[arrow]``): everything else in moefast runs without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import SubsetTable
from moefast._util.atomic import check_not_input, check_writable
from moefast._util.checks import INT64_MAX, check_count
from moefast._util.progress import progress
from moefast.io.readers import load_trace
from moefast.io.readers.arrow import (
    DEFAULT_CHUNK_TOKENS,
    ArrowTrace,
    is_arrow_trace,
    write_arrow_trace,
)
from moefast.io.readers.trtllm import TrtllmRawTrace, is_trtllm_raw
from moefast.trace import PathLike, Trace

#: Most partial tables a builder keeps before merging them into one.
_FAN_IN = 8


class SubsetTableBuilder:
    """One layer's `SubsetTable`, fed chunk by chunk.

    ``add(topk_chunk, weights=None)`` counts a chunk [tokens, k] into a partial table;
    the partial tables are merged in the core as soon as they hold twice the rows of the
    largest one (or number eight), so memory holds at most about three times the final
    table's rows, however many chunks come. ``finish()`` returns the table
    `SubsetTable.from_topk` gives over the concatenated chunks: same rows, weights and
    order. Token counts (and weights whose sums are exact in float64, such as integers) are
    identical whatever the chunking; other float weights may differ in the last bits, as any
    change of summation order does.
    """

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self._tables: list[SubsetTable] = []
        self._rows = 0
        self.tokens = 0

    def add(self, topk: Any, weights: Any = None) -> None:
        """Counts a chunk of top-k ids [tokens, k] (with optional float [tokens] weights)."""
        table = SubsetTable.from_topk(topk, self.num_experts, weights)
        self.add_table(table, int(np.shape(topk)[0]))

    def add_table(self, table: SubsetTable, tokens: int = 0) -> None:
        """Adds a partial table counted elsewhere (for instance on a worker) from
        ``tokens`` tokens."""
        if table.num_experts != self.num_experts:
            raise ValueError(
                f"table has num_experts = {table.num_experts}, the builder {self.num_experts}"
            )
        self.tokens += tokens
        self._tables.append(table)
        self._rows += len(table)
        largest = max(len(t) for t in self._tables)
        if len(self._tables) > 1 and (
            len(self._tables) >= _FAN_IN or self._rows >= 2 * max(largest, 1)
        ):
            self._tables = [SubsetTable.merge(self._tables)]
            self._rows = len(self._tables[0])

    @property
    def rows_held(self) -> int:
        """Rows of the partial tables held now (what bounds the builder's memory)."""
        return self._rows

    def finish(self) -> SubsetTable:
        if not self._tables:
            raise ValueError("no chunk was added: a table needs at least one chunk")
        if len(self._tables) > 1:
            self._tables = [SubsetTable.merge(self._tables)]
            self._rows = len(self._tables[0])
        return self._tables[0]


def table_to_arrays(table: SubsetTable) -> tuple[np.ndarray, np.ndarray, int]:
    """A table as compact numpy buffers (ids uint16 [n, k], weights float64 [n], E), to send
    between processes; `table_from_arrays` rebuilds the identical (unpruned) table."""
    return table.subsets.astype(np.uint16), table.weights, table.num_experts


def table_from_arrays(arrays: tuple[np.ndarray, np.ndarray, int]) -> SubsetTable:
    subsets, weights, num_experts = arrays
    return SubsetTable.from_subsets(subsets, weights, num_experts)


# ---------------------------------------------------------------- the Arrow IPC format


# ---------------------------------------------------------------- chunked reading


def _expand(path_or_paths: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        paths = [Path(path_or_paths)]
    else:
        paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise ValueError("no trace files given")
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_dir() and not (p / "meta_info.json").exists():
            arrows = sorted(q for q in p.iterdir() if q.suffix.lower() == ".arrow")
            npzs = sorted(q for q in p.iterdir() if q.suffix.lower() == ".npz")
            # Shards of both formats are most likely one trace and its conversion: read
            # together they would count each token twice.
            if arrows and npzs:
                raise ValueError(
                    f"{p}: a folder of shards holds both .arrow ({arrows[0].name}, ...) and"
                    f" .npz ({npzs[0].name}, ...) files; keep one format per folder (a"
                    " converted copy beside its source would count every token twice)"
                )
            # A folder of shards is its files; a folder of SGLang dumps is one trace
            # (ranks are deduplicated together).
            if arrows or npzs:
                out.extend(arrows + npzs)
                continue
        out.append(p)
    return out


def trace_files(path_or_paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """The units `iter_trace` reads, in order: Arrow and npz shards of a folder one by one,
    any other file or folder (SGLang per-rank dumps) as one."""
    return _expand(path_or_paths)


def iter_file(path: Path, chunk_tokens: int, **options) -> Iterator[Trace]:
    """The chunks of one file (or SGLang or TensorRT-LLM folder), each at most
    ``chunk_tokens`` tokens."""
    if is_arrow_trace(path):
        arrow = ArrowTrace.open(path)
        for b in range(arrow.num_batches):
            trace = arrow.batch_trace(b)
            yield from _slices(trace, chunk_tokens)
        return
    if is_trtllm_raw(path):
        yield from TrtllmRawTrace.open(path, **options).chunks(chunk_tokens)
        return

    if "format" not in options and path.suffix.lower() == ".arrow":
        options["format"] = "arrow"
    # Other formats are read a file at a time: a shard's size bounds the memory.
    yield from _slices(load_trace(path, **options), chunk_tokens)


def _slices(trace: Trace, chunk_tokens: int) -> Iterator[Trace]:
    if trace.num_tokens <= chunk_tokens:
        yield trace
        return
    for start in range(0, trace.num_tokens, chunk_tokens):
        stop = start + chunk_tokens
        yield Trace(
            trace.topk[start:stop],
            trace.num_experts,
            trace.layer_ids,
            None if trace.weights is None else trace.weights[start:stop],
            None if trace.request_ids is None else trace.request_ids[start:stop],
        )


def iter_trace(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress_bar: bool | None = None,
    **options,
) -> Iterator[Trace]:
    """Reads one or many trace files as `Trace` chunks of at most ``chunk_tokens`` tokens.

    Reads every format `load_trace` reads plus moefast's Arrow traces (`convert`). Arrow
    files are memory-mapped and read a record batch at a time; the ``rank<r>_raw``
    safetensors of a TensorRT-LLM statistics folder one iteration at a time; npz, JSONL and
    fingerprint files one file at a time, and a folder of SGLang per-rank dumps as one unit
    (ranks are deduplicated together), so for those a file bounds the memory: shard big
    traces or `convert` them. A folder of ``.arrow``/``.npz`` shards is read shard by shard.
    ``options`` go to `load_trace` (``num_experts`` for JSONL).
    """
    chunk_tokens = check_count("chunk_tokens", chunk_tokens)
    files = _expand(path_or_paths)
    shown = progress(files, total=len(files), desc="trace files") if progress_bar else files
    for path in shown:
        yield from iter_file(path, chunk_tokens, **options)


def convert(
    sources: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    chunk_tokens: int = 1 << 16,
    **options,
) -> int:
    """Writes any readable trace(s) as one moefast Arrow trace at ``out`` (record batches of
    ``chunk_tokens`` tokens); returns the number of tokens written. Request ids are kept,
    made distinct between files (file i's follow file i - 1's). ``out`` may not be one of
    the sources or inside a folder of them (it would be read as a shard next time)."""
    chunk_tokens = check_count("chunk_tokens", chunk_tokens)
    files = _expand(sources)
    out = check_writable(out, "out")
    check_not_input(out, [*_as_list(sources), *files], "out")
    return write_arrow_trace(
        out, _numbered(files, chunk_tokens, options), chunk_tokens=chunk_tokens
    )


def _as_list(path_or_paths: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        return [Path(path_or_paths)]
    return [Path(p) for p in path_or_paths]


def _numbered(files: list[Path], chunk_tokens: int, options: dict) -> Iterator[Trace]:
    """The chunks of the files, request ids offset so that two files' requests stay apart."""
    offset = 0
    for path in files:
        highest = -1
        for chunk in iter_file(path, chunk_tokens, **options):
            if chunk.request_ids is not None and chunk.num_tokens:
                highest = max(highest, int(chunk.request_ids.max()))
                lowest = int(chunk.request_ids.min())
                if offset and lowest < 0:
                    raise ValueError(f"{path}: negative request ids cannot be numbered apart")
                if highest + offset > INT64_MAX:
                    raise ValueError(f"{path}: request ids too large to number apart")
                chunk = Trace(
                    chunk.topk,
                    chunk.num_experts,
                    chunk.layer_ids,
                    chunk.weights,
                    chunk.request_ids + offset,
                )
            yield chunk
        offset += highest + 1


# ---------------------------------------------------------------- tables by streaming


@dataclass
class TraceShape:
    num_experts: int
    layer_ids: list[int]
    k: int


def held_out_tokens(num_tokens: int, holdout: float | None) -> int:
    """Tokens at the end of a file that are held out: the rule of a split by time
    (`moefast.splits.split_positions`), at least one and never all; none without holdout."""
    if not holdout or num_tokens < 2:
        return 0
    return min(num_tokens - 1, max(1, round(holdout * num_tokens)))


def _layer_chunks(
    path: Path,
    positions: Sequence[int],
    chunk_tokens: int,
    batches: tuple[int, int] | None = None,
    holdout: float | None = None,
    **options,
) -> tuple[int, Iterator[tuple[int, list[np.ndarray], np.ndarray | None, TraceShape]]]:
    """The file's number of tokens (0 where counting them costs a pass and ``holdout`` is
    off), and per chunk: its first token's position in the file, the ids of the layers at
    ``positions``, the weights, the shape. ``batches`` (start, stop) limits an Arrow file to
    those record batches."""
    if is_arrow_trace(path):
        arrow = ArrowTrace.open(path)
        shape = TraceShape(arrow.num_experts, arrow.layer_ids, arrow.k)
        starts = arrow.batch_starts()
        first, stop = (0, arrow.num_batches) if batches is None else batches

        def arrow_chunks() -> Iterator[tuple[int, list[np.ndarray], np.ndarray | None, TraceShape]]:
            for b in range(first, min(stop, arrow.num_batches)):
                # Only the asked layers' bytes are touched.
                layers = [arrow.batch_layer(b, p) for p in positions]
                yield int(starts[b]), layers, arrow.batch_weights(b), shape

        return int(starts[-1]), arrow_chunks()
    if is_trtllm_raw(path):
        raw = TrtllmRawTrace.open(path, **options)
        # Twins are found by content: the count is a pass over the ids, made only when a
        # tail is held out.
        total = raw.num_tokens() if holdout else 0

        def raw_chunks() -> Iterator[tuple[int, list[np.ndarray], np.ndarray | None, TraceShape]]:
            start = 0
            for chunk in raw.chunks(chunk_tokens):
                shape = TraceShape(chunk.num_experts, list(chunk.layer_ids), chunk.k)
                yield start, [chunk.topk[:, p, :] for p in positions], None, shape
                start += chunk.num_tokens

        return total, raw_chunks()

    # Other formats are read a file at a time: a shard's size bounds the memory.
    trace = load_trace(path, **options)

    def slices() -> Iterator[tuple[int, list[np.ndarray], np.ndarray | None, TraceShape]]:
        shape = TraceShape(trace.num_experts, list(trace.layer_ids), trace.k)
        for start in range(0, trace.num_tokens, chunk_tokens):
            stop = start + chunk_tokens
            weights = None if trace.weights is None else trace.weights[start:stop]
            yield start, [trace.topk[start:stop, p, :] for p in positions], weights, shape

    return trace.num_tokens, slices()


def trace_shape(path: PathLike, **options) -> TraceShape:
    """num_experts, layer ids and k of a trace file (for Arrow, from the metadata only)."""
    path = Path(path)
    if is_arrow_trace(path):
        arrow = ArrowTrace.open(path)
        return TraceShape(arrow.num_experts, arrow.layer_ids, arrow.k)
    for chunk in iter_file(path, DEFAULT_CHUNK_TOKENS, **options):
        return TraceShape(chunk.num_experts, list(chunk.layer_ids), chunk.k)
    raise ValueError(f"{path}: the trace holds no tokens")


@dataclass
class FileCounts:
    """One file's (or record-batch range's) tables per layer: the tokens planned on and the
    held-out tail (``test`` None without holdout)."""

    train: list[SubsetTableBuilder]
    test: list[SubsetTableBuilder] | None

    @classmethod
    def empty(cls, num_experts: int, layers: int, holdout: float | None) -> FileCounts:
        def builders() -> list[SubsetTableBuilder]:
            return [SubsetTableBuilder(num_experts) for _ in range(layers)]

        return cls(builders(), builders() if holdout else None)

    @property
    def tokens(self) -> tuple[int, int]:
        """(train, test) tokens counted."""
        return self.train[0].tokens, 0 if self.test is None else self.test[0].tokens


def count_file(
    path: Path,
    positions: Sequence[int],
    chunk_tokens: int,
    shape: TraceShape,
    batches: tuple[int, int] | None = None,
    holdout: float | None = None,
    into: FileCounts | None = None,
    **options,
) -> FileCounts:
    """Counts one file (or its record ``batches``) into one table builder per layer
    position (``into``: builders to add to; default new ones). With ``holdout``, the last
    `held_out_tokens` of the file go to the test builders. Bad ids raise a ValueError
    naming the file."""
    counts = FileCounts.empty(shape.num_experts, len(positions), holdout) if into is None else into
    before = sum(counts.tokens)
    total, chunks = _layer_chunks(path, positions, chunk_tokens, batches, holdout, **options)
    split = total - held_out_tokens(total, holdout) if holdout else None
    for start, ids, weights, got in chunks:
        if (got.num_experts, got.layer_ids, got.k) != (shape.num_experts, shape.layer_ids, shape.k):
            raise ValueError(
                f"{path}: num_experts {got.num_experts}, layers {got.layer_ids}, k {got.k}"
                f" differ from the first file's {shape.num_experts}, {shape.layer_ids},"
                f" {shape.k}: all files must come from one model"
            )
        n = len(ids[0])
        cut = n if split is None else min(max(split - start, 0), n)
        parts = [(counts.train, slice(0, cut))]
        if counts.test is not None:
            parts.append((counts.test, slice(cut, n)))
        for p, layer, *builders in zip(positions, ids, *(b for b, _ in parts), strict=True):
            for builder, (_, rows) in zip(builders, parts, strict=True):
                if rows.stop <= rows.start:
                    continue
                try:
                    builder.add(layer[rows], None if weights is None else weights[rows])
                except ValueError as err:
                    raise ValueError(f"{path}, layer {shape.layer_ids[p]}: {err}") from err
    if sum(counts.tokens) == before:
        raise ValueError(f"{path}: the trace holds no tokens")
    return counts


def stream_tables(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    layers_per_pass: int | None = None,
    progress_bar: bool | None = None,
    **options,
) -> Iterator[tuple[int, SubsetTable]]:
    """Yields ``(layer id, table)`` for every layer of the trace in the files, each table
    built by streaming: memory holds the tables of ``layers_per_pass`` layers (default: all)
    and one chunk, never the trace. With fewer layers per pass the files are read once per
    group of layers (cheap for Arrow files, which are read one layer column at a time)."""
    chunk_tokens = check_count("chunk_tokens", chunk_tokens)
    files = _expand(path_or_paths)
    shape = trace_shape(files[0], **options)
    layers = len(shape.layer_ids)
    per_pass = (
        layers if layers_per_pass is None else check_count("layers_per_pass", layers_per_pass)
    )
    for first in range(0, layers, per_pass):
        positions = list(range(first, min(first + per_pass, layers)))
        counts = FileCounts.empty(shape.num_experts, len(positions), None)
        shown = progress(files, total=len(files), desc="counting files") if progress_bar else files
        for path in shown:
            count_file(path, positions, chunk_tokens, shape, into=counts, **options)
        for p, builder in zip(positions, counts.train, strict=True):
            yield shape.layer_ids[p], builder.finish()
