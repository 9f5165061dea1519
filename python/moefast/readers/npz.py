"""The native trace format: a ``.npz`` with ``topk`` int [tokens, layers, k] and ``num_experts``,
optionally ``layer_ids`` [layers], ``weights`` [tokens] and ``request_ids`` [tokens] (files
written before request ids existed simply lack the array)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from moefast.readers._errors import malformed
from moefast.trace import Trace


def read_npz_trace(path: Path) -> Trace:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise malformed(path, f"not a readable .npz file ({err})") from err
    for name in ("topk", "num_experts"):
        if name not in arrays:
            raise malformed(path, f"no '{name}' array (holds {sorted(arrays)})")
    num_experts = arrays["num_experts"]
    if num_experts.size != 1 or num_experts.dtype.kind not in "iu":
        raise malformed(path, f"'num_experts' must be one integer, got {num_experts!r}")
    layer_ids = arrays.get("layer_ids")
    try:
        return Trace(
            arrays["topk"],
            int(num_experts.reshape(())),
            [] if layer_ids is None else [int(x) for x in np.ravel(layer_ids)],
            arrays.get("weights"),
            arrays.get("request_ids"),
        )
    except (ValueError, TypeError) as err:
        raise malformed(path, str(err)) from err
