"""Readers of routing traces and per-expert loads, one module per source: the native
``.npz`` (`npz`), JSON Lines (`jsonl`), SGLang dumps and statistics (`sglang`), the gpt-oss
fingerprinting JSON (`fingerprint`) and TensorRT-LLM statistics (`trtllm`); `_errors` and
`_loading` hold what they share.

`read_trace` and `read_expert_load` pick the reader by the ``format`` name or, without one,
by the file's name and first bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moefast.io.readers._errors import malformed
from moefast.io.readers._loading import load_npy
from moefast.io.readers.arrow import read_arrow_trace
from moefast.io.readers.fingerprint import read_fingerprint_trace
from moefast.io.readers.jsonl import read_jsonl_trace
from moefast.io.readers.npz import read_npz_trace
from moefast.io.readers.routed import read_routed_trace
from moefast.io.readers.sglang import (
    read_logical_count_json,
    read_sglang_load,
    read_sglang_trace,
)
from moefast.io.readers.trtllm import read_trtllm_load, read_trtllm_trace
from moefast.trace import PathLike, Trace

TRACE_FORMATS = ("npz", "jsonl", "sglang", "fingerprint", "trtllm", "arrow", "routed-experts")

#: Keys that mark a line as a saved server response (`read_routed_trace`), not a
#: (token, layer) record.
_RESPONSE_KEYS = ('"routed_experts"', '"meta_info"', '"choices"', '"response"')
LOAD_FORMATS = ("logical_count", "sglang-stat", "trtllm", "npy", "trace")


def _json_head(path: Path, size: int = 4096) -> str:
    with open(path, "rb") as f:
        return f.read(size).decode("utf-8", errors="replace").lstrip()


def guess_trace_format(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "meta_info.json").exists():
            return "trtllm"  # its rank<r>_raw.safetensors hold per-token ids
        return "sglang"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".jsonl", ".ndjson"):
        head = _json_head(path)
        if any(key in head for key in _RESPONSE_KEYS):
            return "routed-experts"
        return "jsonl"
    if suffix == ".pt":
        return "sglang"
    if suffix in (".arrow", ".ipc"):
        return "arrow"
    if suffix == ".json":
        head = _json_head(path)
        if '"logical_count"' in head:
            raise ValueError(
                f"{path}: holds per-expert loads (logical_count), not a trace; use load_expert_load"
            )
        if '"router_data"' in head or '"row_index"' in head:
            return "fingerprint"
        if head.startswith("{") and '"layer"' in head.split("\n", 1)[0]:
            return "jsonl"
        return "fingerprint"
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"ARROW1":
        return "arrow"
    if magic[:2] == b"PK":
        return "npz"
    if magic[:1] == b"{":
        return "jsonl"
    raise ValueError(
        f"{path}: cannot tell the trace format from the name; pass format= one of {TRACE_FORMATS}"
    )


def read_trace(path: Path, format: str | None = None, **options) -> Trace:
    fmt = format or guess_trace_format(path)
    if fmt == "npz":
        if options:
            raise TypeError(f"the npz reader takes no options, got {sorted(options)}")
        return read_npz_trace(path)
    if fmt == "jsonl":
        return read_jsonl_trace(path, **options)
    if fmt == "sglang":
        return read_sglang_trace(path, **options)
    if fmt == "fingerprint":
        return read_fingerprint_trace(path, **options)
    if fmt == "trtllm":
        return read_trtllm_trace(path, **options)
    if fmt == "routed-experts":
        return read_routed_trace(path, **options)
    if fmt == "arrow":
        if options:
            raise TypeError(f"the arrow reader takes no options, got {sorted(options)}")
        return read_arrow_trace(path)
    raise ValueError(f"unknown trace format {fmt!r}; known: {TRACE_FORMATS}")


def guess_load_format(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "meta_info.json").exists():
            return "trtllm"
        return "sglang-stat"
    suffix = path.suffix.lower()
    if suffix == ".json":
        if '"logical_count"' in _json_head(path):
            return "logical_count"
        return "trace"
    if suffix == ".npy":
        return "npy"
    if suffix == ".pt":
        return "sglang-stat"
    return "trace"


def read_expert_load(
    path: Path, format: str | None = None, num_experts: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """float [layers, E] and the layer ids of its rows."""
    fmt = format or guess_load_format(path)
    if fmt == "logical_count":
        load = read_logical_count_json(path)
        return load, list(range(load.shape[0]))
    if fmt == "sglang-stat":
        return read_sglang_load(path)
    if fmt == "trtllm":
        return read_trtllm_load(path, num_experts)
    if fmt == "npy":
        load = load_npy(path)
        if load.ndim == 1:
            load = load[None, :]
        if load.ndim != 2 or load.dtype.kind not in "iuf":
            raise malformed(
                path, f"expected numbers [layers, E] or [E], got {load.dtype} {load.shape}"
            )
        return load.astype(np.float64), list(range(load.shape[0]))
    if fmt == "trace":
        trace = read_trace(path)
        return trace.expert_load(), list(trace.layer_ids)
    raise ValueError(f"unknown expert-load format {fmt!r}; known: {LOAD_FORMATS}")


def load_expert_load(
    path,
    format: str | None = None,
    drop_empty: bool = True,
    return_layer_ids: bool = False,
    num_experts: int | None = None,
):
    """Per-expert loads (token-expert assignments, no co-activation) as float [layers, E].

    Reads SGLang ``logical_count`` JSON (``format="logical_count"``), SGLang ``stat``,
    ``per_pass`` and ``per_token`` ``.pt`` dumps (``"sglang-stat"``, needs torch),
    TensorRT-LLM statistics folders (``"trtllm"``),
    ``.npy`` arrays [layers, E] or [E] (``"npy"``), or any trace (``"trace"``, counted).
    ``drop_empty`` drops rows without any load (the dense layers SGLang records as zeros);
    ``return_layer_ids`` also returns the layer id of each row. ``num_experts`` (the model's)
    lets the TensorRT-LLM reader tell slot counts (load balancer on) from expert counts.
    """
    path = Path(path)
    load, layer_ids = read_expert_load(path, format, num_experts)
    if not np.all(np.isfinite(load)) or (load < 0).any():
        raise malformed(path, "loads must be finite and non-negative")
    if drop_empty:
        rows = np.nonzero(load.sum(axis=1) > 0)[0]
        if rows.size == 0:
            raise malformed(path, "every layer has zero load")
        load, layer_ids = load[rows], [layer_ids[i] for i in rows]
    return (load, layer_ids) if return_layer_ids else load


def load_trace(path: PathLike, format: str | None = None, **options) -> Trace:
    """Read a routing trace from ``path``.

    ``format`` is one of ``"npz"``, ``"jsonl"``, ``"sglang"`` (SGLang ``per_token`` dumps:
    one ``.pt`` file or a folder of them, one per rank; needs torch), ``"fingerprint"``
    (per-token ``router_data`` JSON of the gpt-oss expert-fingerprinting recorder),
    ``"routed-experts"`` (SGLang or vLLM responses carrying routed experts, one a line, as
    ``moefast record`` saves them; options ``num_layers``, ``k``, ``num_experts``), or None
    to guess it from the name and content. ``options`` go to the format's reader (for
    ``"jsonl"``: ``num_experts``). Raises ValueError naming the file (and line) for
    malformed input.
    """

    return read_trace(Path(path), format, **options)
