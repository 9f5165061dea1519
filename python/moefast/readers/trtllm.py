"""TensorRT-LLM expert statistics: a folder with ``meta_info.json`` (``num_experts``,
``num_experts_per_token``) and ``rank<r>.safetensors`` whose keys ``"<iter>_<layer>"`` hold
per-expert token counts [E]. Counts are summed over iterations and ranks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from moefast.readers._errors import malformed, require
from moefast.readers._loading import read_json, to_numpy
from moefast.trace import MAX_EXPERTS
from moefast.validation import MAX_LAYERS, check_field_int

# ASCII digits, few enough that the numbers are bounded before int() reads them.
_KEY = re.compile(r"([0-9]{1,12})_([0-9]{1,9})")
_RANK = re.compile(r"rank([0-9]{1,9})")


def expert_load_from_trtllm(
    meta: Mapping, ranks: list[Mapping[str, np.ndarray]], source: Path | str = "<trtllm statistics>"
) -> tuple[np.ndarray, list[int]]:
    """float [layers, E] and the layer ids, from ``meta_info`` and each rank's tensors."""
    path = Path(str(source))
    if not isinstance(meta, Mapping):
        raise malformed(path, "meta_info.json must hold a JSON object")
    num_experts = check_field_int(
        path / "meta_info.json", "num_experts", meta.get("num_experts"), 1, MAX_EXPERTS
    )
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


def read_trtllm_load(path: Path) -> tuple[np.ndarray, list[int]]:
    meta = read_json(path / "meta_info.json")
    # rank<r>.safetensors only: newer versions also write rank<r>_raw.safetensors (per-token
    # top-k, not counts).
    ranked = [(_RANK.fullmatch(p.stem), p) for p in path.glob("rank*.safetensors")]
    files = [p for _, p in sorted((int(m.group(1)), p) for m, p in ranked if m)]
    if not files:
        raise malformed(path, "no rank<r>.safetensors file")
    st = require("safetensors", "reading TensorRT-LLM statistics")
    require("safetensors.numpy", "reading TensorRT-LLM statistics")
    ranks = []
    for f in files:
        try:
            ranks.append(st.numpy.load_file(str(f)))
        except Exception as err:  # safetensors raises its own error types
            raise malformed(f, f"not a readable safetensors file ({err})") from err
    return expert_load_from_trtllm(meta, ranks, path)
