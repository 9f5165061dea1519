"""The native trace format: a ``.npz`` with ``topk`` int [tokens, layers, k] and ``num_experts``,
optionally ``layer_ids`` [layers], ``weights`` [tokens] and ``request_ids`` [tokens] (files
written before request ids existed simply lack the array)."""

from __future__ import annotations

from pathlib import Path

from moefast.io.readers._errors import malformed
from moefast.io.readers._loading import load_npz
from moefast.trace import Trace


def read_npz_trace(path: Path) -> Trace:
    arrays = load_npz(path)
    for name in ("topk", "num_experts"):
        if name not in arrays:
            raise malformed(path, f"no '{name}' array (holds {sorted(arrays)})")
    num_experts = arrays["num_experts"]
    if num_experts.size != 1 or num_experts.dtype.kind not in "iu":
        raise malformed(path, f"'num_experts' must be one integer, got {num_experts!r}")
    layer_ids = arrays.get("layer_ids")
    if layer_ids is not None and layer_ids.size and layer_ids.dtype.kind not in "iu":
        raise malformed(path, f"'layer_ids' must hold integers, got {layer_ids.dtype} values")
    try:
        return Trace(
            arrays["topk"],
            num_experts.reshape(()).item(),
            [] if layer_ids is None else layer_ids.ravel().tolist(),
            arrays.get("weights"),
            arrays.get("request_ids"),
        )
    except (ValueError, TypeError) as err:
        raise malformed(path, str(err)) from err
