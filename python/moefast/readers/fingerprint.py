"""Per-token JSON of the gpt-oss expert-fingerprinting recorder
(``{"router_data": [{"token_<i>": {"layer_<l>": {"selected_experts": [ids], ...}}}]}``),
a single answer object or a list of them; each answer's tokens are appended in order, and the
answer's position in the file is the request id of its tokens."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from moefast.readers._errors import malformed
from moefast.readers._loading import read_json
from moefast.trace import Trace

_LAYER = re.compile(r"layer_(\d+)$")


def topk_from_router_data(router_data: list, path: Path) -> tuple[np.ndarray, list[int]]:
    """int [tokens, layers, k] and the layer ids of one answer's ``router_data``."""
    tokens = []
    layer_ids: list[int] = []
    for i, entry in enumerate(router_data):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise malformed(path, f"router_data[{i}] must be {{'token_<i>': {{...}}}}")
        (layers,) = entry.values()
        if not isinstance(layers, dict):
            raise malformed(path, f"router_data[{i}] holds no layers")
        ids = {}
        for name, value in layers.items():
            match = _LAYER.match(name)
            if not match or not isinstance(value, dict) or "selected_experts" not in value:
                raise malformed(path, f"router_data[{i}]['{name}'] is not a layer record")
            ids[int(match.group(1))] = value["selected_experts"]
        order = sorted(ids)
        if i == 0:
            layer_ids = order
        elif order != layer_ids:
            raise malformed(path, f"router_data[{i}] has layers {order}, others {layer_ids}")
        tokens.append([ids[layer] for layer in order])
    if not tokens:
        raise malformed(path, "router_data is empty")
    try:
        return np.array(tokens, dtype=np.int64), layer_ids
    except ValueError as err:
        raise malformed(path, f"tokens pick different numbers of experts ({err})") from err


def read_fingerprint_trace(path: Path, num_experts: int | None = None) -> Trace:
    data = read_json(path)
    answers = data if isinstance(data, list) else [data]
    parts: list[np.ndarray] = []
    layer_ids: list[int] = []
    requests: list[np.ndarray] = []
    for answer in answers:
        if not isinstance(answer, dict) or "router_data" not in answer:
            raise malformed(path, "an answer without 'router_data'")
        topk, ids = topk_from_router_data(answer["router_data"], path)
        if parts and ids != layer_ids:
            raise malformed(path, f"answers have different layers: {ids} and {layer_ids}")
        layer_ids = ids
        requests.append(np.full(len(topk), len(parts), dtype=np.int64))
        parts.append(topk)
    if not parts:
        raise malformed(path, "no answers")
    topk = np.concatenate(parts)
    if num_experts is None:
        num_experts = int(topk.max()) + 1
    try:
        return Trace(topk, num_experts, layer_ids, request_ids=np.concatenate(requests))
    except ValueError as err:
        raise malformed(path, str(err)) from err
