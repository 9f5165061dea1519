"""The Arrow IPC trace format (moefast convert): chunks of tokens in record batches, read a
chunk at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moefast._util.checks import check_layer_ids
from moefast.trace import PathLike, Trace

#: Tokens per chunk when the caller gives none: 1M tokens of a 58-layer k=8 model is
#: ~1.9 GB as int32, ~0.5 GB as the uint8 ids of the Arrow format.
DEFAULT_CHUNK_TOKENS = 1 << 20


#: Schema metadata key and value that mark a moefast Arrow trace.
ARROW_FORMAT = "moefast-trace/1"


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.ipc
    except ImportError as err:
        raise ImportError(
            "the Arrow trace format needs pyarrow: pip install 'moefast[arrow]'"
        ) from err
    return pa


def is_arrow_trace(path: Path) -> bool:
    if path.suffix.lower() in (".arrow", ".feather", ".ipc"):
        return True
    if path.is_file():
        with open(path, "rb") as f:
            return f.read(6) == b"ARROW1"
    return False


@dataclass
class ArrowTrace:
    """An open Arrow trace: memory-mapped, read one record batch and one layer at a time."""

    path: Path
    num_experts: int
    layer_ids: list[int]
    k: int
    weighted: bool
    reader: Any

    @classmethod
    def open(cls, path: PathLike) -> ArrowTrace:
        pa = _pyarrow()
        path = Path(path)
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        except (OSError, pa.ArrowInvalid) as err:
            raise ValueError(f"{path}: not a readable Arrow IPC file ({err})") from err
        meta = reader.schema.metadata or {}
        if meta.get(b"moefast.format") != ARROW_FORMAT.encode():
            raise ValueError(f"{path}: an Arrow file, but not a moefast trace ({ARROW_FORMAT})")
        try:
            num_experts = int(meta[b"moefast.num_experts"])
            layer_ids = check_layer_ids(json.loads(meta[b"moefast.layer_ids"]))
            k = int(meta[b"moefast.k"])
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: malformed moefast metadata ({err})") from err
        names = reader.schema.names
        expected = [f"layer_{i}" for i in layer_ids]
        if names[: len(expected)] != expected:
            raise ValueError(f"{path}: columns {names} do not match layer_ids {layer_ids}")
        return cls(path, num_experts, layer_ids, k, "weights" in names, reader)

    @property
    def num_batches(self) -> int:
        return int(self.reader.num_record_batches)

    def batch_starts(self) -> np.ndarray:
        """int [batches + 1]: the first token of each record batch, then the file's tokens
        (from the batches' headers: no ids are read)."""
        rows = [self.reader.get_batch(b).num_rows for b in range(self.num_batches)]
        return np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])

    def batch_layer(self, batch: int, position: int) -> np.ndarray:
        """Ids of the layer at ``position`` in record batch ``batch``, [tokens, k] (no copy)."""
        column = self.reader.get_batch(batch).column(position)
        if column.null_count:
            raise ValueError(f"{self.path}: batch {batch}, layer {position} has null rows")
        start = column.offset * self.k
        flat = column.values.slice(start, len(column) * self.k).to_numpy(zero_copy_only=True)
        return flat.reshape(-1, self.k)

    def batch_weights(self, batch: int) -> np.ndarray | None:
        if not self.weighted:
            return None
        column = self.reader.get_batch(batch).column(len(self.layer_ids))
        return column.to_numpy(zero_copy_only=False)

    def batch_trace(self, batch: int) -> Trace:
        layers = [self.batch_layer(batch, p) for p in range(len(self.layer_ids))]
        return Trace(
            np.stack(layers, axis=1), self.num_experts, self.layer_ids, self.batch_weights(batch)
        )


def read_arrow_trace(path: PathLike) -> Trace:
    """A whole Arrow trace in memory (`iter_trace` reads it chunk by chunk)."""
    arrow = ArrowTrace.open(path)
    chunks = [arrow.batch_trace(b) for b in range(arrow.num_batches)]
    if not chunks:
        raise ValueError(f"{path}: the trace holds no tokens")
    weights = None if not arrow.weighted else np.concatenate([c.weights for c in chunks])
    return Trace(
        np.concatenate([c.topk for c in chunks]), arrow.num_experts, arrow.layer_ids, weights
    )


def write_arrow_trace(
    path: PathLike, chunks: Iterator[Trace], *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> int:
    """Writes the chunks (one trace shape) as an Arrow IPC file, one record batch per at most
    ``chunk_tokens`` tokens; returns the number of tokens. Written to a temporary file and
    renamed, so a failure leaves no partial file."""
    pa = _pyarrow()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    writer = None
    shape: tuple[int, list[int], int, bool] | None = None
    tokens = 0
    try:
        for chunk in chunks:
            this = (chunk.num_experts, list(chunk.layer_ids), chunk.k, chunk.weights is not None)
            if shape is None:
                shape = this
                dtype = pa.uint8() if chunk.num_experts <= 256 else pa.uint16()
                fields = [
                    pa.field(f"layer_{i}", pa.list_(dtype, chunk.k), nullable=False)
                    for i in chunk.layer_ids
                ]
                if chunk.weights is not None:
                    fields.append(pa.field("weights", pa.float64(), nullable=False))
                meta = {
                    "moefast.format": ARROW_FORMAT,
                    "moefast.num_experts": str(chunk.num_experts),
                    "moefast.layer_ids": json.dumps(list(chunk.layer_ids)),
                    "moefast.k": str(chunk.k),
                }
                schema = pa.schema(fields, metadata=meta)
                writer = pa.ipc.new_file(str(tmp), schema)
                np_dtype = np.uint8 if chunk.num_experts <= 256 else np.uint16
            elif this != shape:
                raise ValueError(
                    "trace chunks differ in num_experts, layer_ids, k or weighting:"
                    f" {shape} then {this}; convert files of one model at a time"
                )
            assert writer is not None
            for start in range(0, chunk.num_tokens, chunk_tokens):
                part = chunk.topk[start : start + chunk_tokens]
                columns = [
                    pa.FixedSizeListArray.from_arrays(
                        pa.array(part[:, p, :].astype(np_dtype).ravel()), chunk.k
                    )
                    for p in range(chunk.num_layers)
                ]
                if chunk.weights is not None:
                    columns.append(pa.array(chunk.weights[start : start + chunk_tokens]))
                writer.write_batch(pa.record_batch(columns, schema=schema))
            tokens += chunk.num_tokens
        if writer is None:
            raise ValueError("nothing to convert: the input holds no trace")
        writer.close()
        writer = None
        os.replace(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return tokens
