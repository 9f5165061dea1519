"""Per-token JSON of the gpt-oss expert-fingerprinting recorder
(``{"router_data": [{"token_<i>": {"layer_<l>": {"selected_experts": [ids], ...}}}]}``),
a single answer object or a list of them; each answer's tokens are appended in order, and the
answer's position in the file is the request id of its tokens."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from moefast._util.checks import MAX_LAYERS, check_int
from moefast.io.readers._errors import malformed
from moefast.io.readers._loading import expert_ids, read_json
from moefast.trace import MAX_EXPERTS, Trace

# ASCII digits only (\d also matches other scripts' digits, which int() reads), few enough
# that the number is bounded before it is converted.
_LAYER = re.compile(r"layer_([0-9]{1,9})")


def topk_from_router_data(router_data: list, path: Path) -> tuple[np.ndarray, list[int]]:
    """int [tokens, layers, k] and the layer ids of one answer's ``router_data``."""
    if not isinstance(router_data, list):
        raise malformed(path, f"'router_data' must be a list, got {type(router_data).__name__}")
    tokens = []
    layer_ids = None
    k = None
    for i, entry in enumerate(router_data):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise malformed(path, f"router_data[{i}] must be {{'token_<i>': {{...}}}}")
        (layers,) = entry.values()
        if not isinstance(layers, dict):
            raise malformed(path, f"router_data[{i}] holds no layers")
        ids: dict[int, list[int]] = {}
        for name, value in layers.items():
            match = _LAYER.fullmatch(name)
            if not match or not isinstance(value, dict) or "selected_experts" not in value:
                raise malformed(path, f"router_data[{i}]['{name}'] is not a layer record")
            layer = int(match.group(1))
            if layer >= MAX_LAYERS:
                raise malformed(
                    path, f"router_data[{i}]: layer {layer} out of range [0, {MAX_LAYERS})"
                )
            if layer in ids:
                raise malformed(path, f"router_data[{i}] names layer {layer} twice ('{name}')")
            experts = expert_ids(
                value["selected_experts"], path, f"router_data[{i}]['{name}']['selected_experts']"
            )
            if k is not None and len(experts) != k:
                raise malformed(
                    path,
                    f"router_data[{i}]['{name}'] selects {len(experts)} experts"
                    f" where others select {k}",
                )
            k = len(experts)
            ids[layer] = experts
        if not ids:
            raise malformed(path, f"router_data[{i}] holds no layers")
        order = sorted(ids)
        if layer_ids is None:
            layer_ids = order
        elif order != layer_ids:
            raise malformed(path, f"router_data[{i}] has layers {order}, others {layer_ids}")
        tokens.append([ids[layer] for layer in order])
    if not tokens or layer_ids is None:
        raise malformed(path, "router_data is empty")
    return np.array(tokens, dtype=np.int64), layer_ids


def read_fingerprint_trace(path: Path, num_experts: int | None = None) -> Trace:
    if num_experts is not None:
        num_experts = check_int("num_experts", num_experts, 1, MAX_EXPERTS)
    data = read_json(path)
    answers = data if isinstance(data, list) else [data]
    if not answers:
        raise malformed(path, "no answer in the file (an empty list)")
    parts: list[np.ndarray] = []
    layer_ids: list[int] = []
    requests: list[np.ndarray] = []
    for answer in answers:
        if not isinstance(answer, dict) or "router_data" not in answer:
            raise malformed(path, "an answer without 'router_data'")
        topk, ids = topk_from_router_data(answer["router_data"], path)
        if parts and ids != layer_ids:
            raise malformed(path, f"answers have different layers: {ids} and {layer_ids}")
        if parts and topk.shape[2] != parts[0].shape[2]:
            raise malformed(path, f"answers select {topk.shape[2]} and {parts[0].shape[2]} experts")
        layer_ids = ids
        requests.append(np.full(len(topk), len(parts), dtype=np.int64))
        parts.append(topk)
    topk = np.concatenate(parts)
    if num_experts is None:
        num_experts = int(topk.max()) + 1
    try:
        return Trace(topk, num_experts, layer_ids, request_ids=np.concatenate(requests))
    except (ValueError, TypeError) as err:
        raise malformed(path, str(err)) from err
