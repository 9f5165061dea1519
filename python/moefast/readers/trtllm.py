"""TensorRT-LLM expert statistics: a folder with ``meta_info.json`` (``num_experts``,
``num_experts_per_token``) and ``rank<r>.safetensors`` whose keys ``"<iter>_<layer>"`` (layer =
decoder-layer index) hold per-expert token counts [E], summed here over iterations and ranks.
Newer versions also write ``rank<r>_raw.safetensors`` with the same keys holding each token's
top-k ids, int32 [tokens, k]: co-activation data, read as a trace (`read_trtllm_trace`).
With the MoE load balancer on while recording, ids and counts are per *slot* and
``num_experts`` is the slot count: give the model's expert count to detect it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from moefast.readers._errors import malformed, require
from moefast.readers._loading import read_json, to_numpy
from moefast.trace import MAX_EXPERTS, Trace
from moefast.validation import MAX_LAYERS, check_field_int

# ASCII digits, few enough that the numbers are bounded before int() reads them.
_KEY = re.compile(r"([0-9]{1,12})_([0-9]{1,9})")
_RANK = re.compile(r"rank([0-9]{1,9})")


def _meta_experts(meta: Mapping, path: Path, model_experts: int | None) -> int:
    if not isinstance(meta, Mapping):
        raise malformed(path, "meta_info.json must hold a JSON object")
    num_experts = check_field_int(
        path / "meta_info.json", "num_experts", meta.get("num_experts"), 1, MAX_EXPERTS
    )
    if model_experts is not None and num_experts != model_experts:
        raise malformed(
            path,
            f"meta_info.json says num_experts = {num_experts} but the model has {model_experts}"
            " experts: statistics recorded with the MoE load balancer on count physical slots"
            f" ({num_experts} here), not experts; record again with the load balancer off",
        )
    return num_experts


def expert_load_from_trtllm(
    meta: Mapping,
    ranks: list[Mapping[str, np.ndarray]],
    source: Path | str = "<trtllm statistics>",
    num_experts: int | None = None,
) -> tuple[np.ndarray, list[int]]:
    """float [layers, E] and the layer ids, from ``meta_info`` and each rank's count tensors
    (``num_experts``: the model's, to detect slot counts)."""
    path = Path(str(source))
    num_experts = _meta_experts(meta, path, num_experts)
    totals: dict[int, np.ndarray] = {}
    for r, tensors in enumerate(ranks):
        for key, value in tensors.items():
            match = _KEY.fullmatch(key)
            if not match:
                raise malformed(path, f"rank {r}: key '{key}' is not '<iter>_<layer>'")
            counts = to_numpy(value, path, key).astype(np.float64).ravel()
            if counts.shape != (num_experts,):
                raise malformed(
                    path, f"rank {r}: '{key}' holds {counts.size} counts for {num_experts} experts"
                )
            layer = int(match.group(2))
            if layer >= MAX_LAYERS:
                raise malformed(path, f"rank {r}: key '{key}' names layer {layer} >= {MAX_LAYERS}")
            totals[layer] = totals.get(layer, 0) + counts
    if not totals:
        raise malformed(path, "no statistics in any rank file")
    layers = sorted(totals)
    return np.stack([totals[layer] for layer in layers]), layers


def _rank_files(path: Path, raw: bool) -> list[Path]:
    pattern = re.compile(
        r"rank([0-9]{1,9})_raw\.safetensors" if raw else r"rank([0-9]{1,9})\.safetensors"
    )
    found = [(int(m.group(1)), f) for f in path.iterdir() if (m := pattern.fullmatch(f.name))]
    return [f for _, f in sorted(found)]


def _load_ranks(files: list[Path]) -> list[Mapping[str, np.ndarray]]:
    st = require("safetensors", "reading TensorRT-LLM statistics")
    require("safetensors.numpy", "reading TensorRT-LLM statistics")
    ranks = []
    for f in files:
        try:
            ranks.append(st.numpy.load_file(str(f)))
        except Exception as err:  # safetensors raises its own error types
            raise malformed(f, f"not a readable safetensors file ({err})") from err
    return ranks


def read_trtllm_load(path: Path, num_experts: int | None = None) -> tuple[np.ndarray, list[int]]:
    meta = read_json(path / "meta_info.json")
    # rank<r>_raw.safetensors hold per-token ids, not counts: never summed as counts.
    files = _rank_files(path, raw=False)
    if not files:
        if _rank_files(path, raw=True):
            raise malformed(
                path, "only rank<r>_raw.safetensors (per-token ids): read it with load_trace"
            )
        raise malformed(path, "no rank<r>.safetensors file")
    return expert_load_from_trtllm(meta, _load_ranks(files), path, num_experts)


def trace_from_trtllm_raw(
    meta: Mapping,
    ranks: list[Mapping[str, np.ndarray]],
    source: Path | str = "<trtllm statistics>",
    num_experts: int | None = None,
) -> Trace:
    """A trace from each rank's raw tensors (``"<iter>_<layer>"`` -> int [tokens, k]).

    Tokens of one (iteration, rank) are the same in every layer; blocks are concatenated in
    iteration then rank order, and a rank repeating another's block of the same iteration
    (tensor parallelism without attention DP) is kept once."""
    path = Path(str(source))
    num_experts = _meta_experts(meta, path, num_experts)
    blocks: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    for r, tensors in enumerate(ranks):
        for key, value in tensors.items():
            match = _KEY.match(key)
            if not match:
                raise malformed(path, f"rank {r}: key '{key}' is not '<iter>_<layer>'")
            ids = to_numpy(value, path, key)
            if ids.ndim != 2 or (ids.size and ids.dtype.kind not in "iu"):
                raise malformed(path, f"rank {r}: '{key}' must be int [tokens, k], got {ids.shape}")
            blocks.setdefault((int(match.group(1)), r), {})[int(match.group(2))] = ids
    if not blocks:
        raise malformed(path, "no tensors in any raw rank file")
    layer_ids = sorted(next(iter(blocks.values())))
    parts: list[np.ndarray] = []
    seen: dict[int, list[np.ndarray]] = {}
    for (it, r), layers in sorted(blocks.items()):
        if sorted(layers) != layer_ids:
            raise malformed(
                path, f"iteration {it} rank {r}: layers {sorted(layers)}, not {layer_ids}"
            )
        shapes = {layers[x].shape for x in layer_ids}
        if len(shapes) != 1:
            raise malformed(path, f"iteration {it} rank {r}: layers hold {sorted(shapes)} ids")
        block = np.stack([layers[x] for x in layer_ids], axis=1).astype(np.int64)
        twins = seen.setdefault(it, [])
        if any(t.shape == block.shape and np.array_equal(t, block) for t in twins):
            continue
        twins.append(block)
        parts.append(block)
    topk = np.concatenate(parts)
    try:
        return Trace(topk, num_experts, layer_ids)
    except (ValueError, TypeError) as err:
        raise malformed(path, str(err)) from err


def read_trtllm_trace(path: Path, num_experts: int | None = None) -> Trace:
    """The per-token top-k of ``rank<r>_raw.safetensors`` in a statistics folder."""
    meta = read_json(path / "meta_info.json")
    files = _rank_files(path, raw=True)
    if not files:
        raise malformed(
            path,
            "no rank<r>_raw.safetensors (per-token ids): this TensorRT-LLM version wrote counts"
            " only; read them with load_expert_load",
        )
    return trace_from_trtllm_raw(meta, _load_ranks(files), path, num_experts)
