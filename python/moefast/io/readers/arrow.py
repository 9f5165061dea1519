"""The Arrow IPC trace format (moefast convert): chunks of tokens in record batches, read a
chunk at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import MAX_K
from moefast._util.checks import check_field_int, check_layer_ids
from moefast.trace import MAX_EXPERTS, PathLike, Trace

#: Tokens per chunk when the caller gives none: 1M tokens of a 58-layer k=8 model is
#: ~1.9 GB as int32, ~0.5 GB as the uint8 ids of the Arrow format.
DEFAULT_CHUNK_TOKENS = 1 << 20


#: Schema metadata key and value that mark a moefast Arrow trace.
ARROW_FORMAT = "moefast-trace/1"

#: The optional columns after the layers', by name.
WEIGHTS, REQUEST_IDS = "weights", "request_ids"


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


@contextlib.contextmanager
def _named(path: Path, what: str) -> Iterator[None]:
    """pyarrow's errors on a corrupt file (OSError, ArrowInvalid, ...) as a ValueError naming
    the file and what was being read."""
    pa = _pyarrow()
    try:
        yield
    except (OSError, pa.ArrowException, IndexError, KeyError) as err:
        raise ValueError(f"{path}: {what} is unreadable ({type(err).__name__}: {err})") from err


def _metadata(path: Path, meta: dict) -> tuple[int, list[int], int]:
    """num_experts, layer ids and k of the schema's metadata, each checked."""
    try:
        num_experts = check_field_int(
            path, "moefast.num_experts", int(meta[b"moefast.num_experts"]), 1, MAX_EXPERTS
        )
        k = check_field_int(path, "moefast.k", int(meta[b"moefast.k"]), 1, MAX_K)
        layers = json.loads(meta[b"moefast.layer_ids"])
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"moefast.layer_ids must be a non-empty list, got {layers!r:.80}")
        layer_ids = check_layer_ids(layers)
    except (KeyError, ValueError, TypeError, RecursionError) as err:
        raise ValueError(f"{path}: malformed moefast metadata ({err})") from err
    if len(set(layer_ids)) != len(layer_ids):
        raise ValueError(f"{path}: moefast.layer_ids repeats a layer: {layer_ids}")
    return num_experts, layer_ids, k


@dataclass
class ArrowTrace:
    """An open Arrow trace: memory-mapped, read one record batch and one layer at a time.
    Columns: ``layer_<id>`` per layer (fixed-size lists of k integer ids), then optionally
    ``weights`` (float) and ``request_ids`` (int), found by name."""

    path: Path
    num_experts: int
    layer_ids: list[int]
    k: int
    weighted: bool
    reader: Any
    #: column positions of the weights and request ids (None: absent)
    weights_at: int | None = None
    requests_at: int | None = None

    @classmethod
    def open(cls, path: PathLike) -> ArrowTrace:
        pa = _pyarrow()
        path = Path(path)
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        except (OSError, pa.ArrowException) as err:
            raise ValueError(f"{path}: not a readable Arrow IPC file ({err})") from err
        meta = reader.schema.metadata or {}
        if meta.get(b"moefast.format") != ARROW_FORMAT.encode():
            raise ValueError(f"{path}: an Arrow file, but not a moefast trace ({ARROW_FORMAT})")
        num_experts, layer_ids, k = _metadata(path, meta)
        schema = reader.schema
        names = schema.names
        expected = [f"layer_{i}" for i in layer_ids]
        if names[: len(expected)] != expected:
            raise ValueError(f"{path}: columns {names} do not match layer_ids {layer_ids}")
        for name in expected:
            kind = schema.field(name).type
            if not (
                pa.types.is_fixed_size_list(kind)
                and kind.list_size == k
                and pa.types.is_integer(kind.value_type)
            ):
                raise ValueError(
                    f"{path}: column {name} must be fixed-size lists of {k} integer ids"
                    f" (moefast.k = {k}), got {kind}"
                )
        extra = {}
        for name, check in ((WEIGHTS, _is_number), (REQUEST_IDS, _is_integer)):
            if names.count(name) > 1:
                raise ValueError(f"{path}: more than one column named {name!r}")
            if name in names:
                at = names.index(name)
                if not check(pa, schema.field(at).type):
                    raise ValueError(
                        f"{path}: column {name!r} has type {schema.field(at).type}, not numbers"
                    )
                extra[name] = at
        return cls(
            path,
            num_experts,
            layer_ids,
            k,
            WEIGHTS in extra,
            reader,
            extra.get(WEIGHTS),
            extra.get(REQUEST_IDS),
        )

    @property
    def num_batches(self) -> int:
        return int(self.reader.num_record_batches)

    def _batch(self, batch: int) -> Any:
        with _named(self.path, f"record batch {batch}"):
            return self.reader.get_batch(batch)

    def batch_starts(self) -> np.ndarray:
        """int [batches + 1]: the first token of each record batch, then the file's tokens
        (from the batches' headers: no ids are read)."""
        rows = [self._batch(b).num_rows for b in range(self.num_batches)]
        return np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])

    def batch_layer(self, batch: int, position: int) -> np.ndarray:
        """Ids of the layer at ``position`` in record batch ``batch``, [tokens, k] (no copy)."""
        with _named(self.path, f"record batch {batch}, layer {self.layer_ids[position]}"):
            column = self._batch(batch).column(position)
            if column.null_count:
                raise ValueError(f"{self.path}: batch {batch}, layer {position} has null rows")
            start = column.offset * self.k
            values = column.values.slice(start, len(column) * self.k)
            if values.null_count:
                raise ValueError(f"{self.path}: batch {batch}, layer {position} has null ids")
            flat = values.to_numpy(zero_copy_only=True)
            if flat.size != len(column) * self.k:
                raise ValueError(
                    f"{self.path}: batch {batch}, layer {position} holds {flat.size} ids for"
                    f" {len(column)} tokens of k = {self.k}"
                )
            return flat.reshape(-1, self.k)

    def _column(self, batch: int, at: int | None, name: str) -> np.ndarray | None:
        if at is None:
            return None
        with _named(self.path, f"record batch {batch}, column {name!r}"):
            column = self._batch(batch).column(at)
            if column.null_count:
                raise ValueError(f"{self.path}: batch {batch}, column {name!r} has null rows")
            return column.to_numpy(zero_copy_only=False)

    def batch_weights(self, batch: int) -> np.ndarray | None:
        return self._column(batch, self.weights_at, WEIGHTS)

    def batch_request_ids(self, batch: int) -> np.ndarray | None:
        return self._column(batch, self.requests_at, REQUEST_IDS)

    def batch_trace(self, batch: int) -> Trace:
        layers = [self.batch_layer(batch, p) for p in range(len(self.layer_ids))]
        try:
            return Trace(
                np.stack(layers, axis=1),
                self.num_experts,
                self.layer_ids,
                self.batch_weights(batch),
                request_ids=self.batch_request_ids(batch),
            )
        except (ValueError, TypeError) as err:
            raise ValueError(f"{self.path}: record batch {batch}: {err}") from err


def _is_number(pa: Any, kind: Any) -> bool:
    return pa.types.is_floating(kind) or pa.types.is_integer(kind)


def _is_integer(pa: Any, kind: Any) -> bool:
    return pa.types.is_integer(kind)


def read_arrow_trace(path: PathLike) -> Trace:
    """A whole Arrow trace in memory (`iter_trace` reads it chunk by chunk)."""
    arrow = ArrowTrace.open(path)
    chunks = [arrow.batch_trace(b) for b in range(arrow.num_batches)]
    if not chunks:
        raise ValueError(f"{path}: the trace holds no tokens")
    weights = None if not arrow.weighted else np.concatenate([c.weights for c in chunks])
    requests = (
        None if arrow.requests_at is None else np.concatenate([c.request_ids for c in chunks])
    )
    return Trace(
        np.concatenate([c.topk for c in chunks]),
        arrow.num_experts,
        arrow.layer_ids,
        weights,
        request_ids=requests,
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
    shape: tuple[int, list[int], int, bool, bool] | None = None
    tokens = 0
    try:
        for chunk in chunks:
            this = (
                chunk.num_experts,
                list(chunk.layer_ids),
                chunk.k,
                chunk.weights is not None,
                chunk.request_ids is not None,
            )
            if shape is None:
                shape = this
                dtype = pa.uint8() if chunk.num_experts <= 256 else pa.uint16()
                fields = [
                    pa.field(f"layer_{i}", pa.list_(dtype, chunk.k), nullable=False)
                    for i in chunk.layer_ids
                ]
                if chunk.weights is not None:
                    fields.append(pa.field(WEIGHTS, pa.float64(), nullable=False))
                if chunk.request_ids is not None:
                    fields.append(pa.field(REQUEST_IDS, pa.int64(), nullable=False))
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
                    "trace chunks differ in num_experts, layer_ids, k, weighting or request ids:"
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
                if chunk.request_ids is not None:
                    columns.append(pa.array(chunk.request_ids[start : start + chunk_tokens]))
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
