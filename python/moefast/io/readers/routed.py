"""Routed experts that servers return with each response, saved one response a line.

SGLang (``--enable-return-routed-experts``, request field ``"return_routed_experts": true``)
answers ``/generate`` with ``meta_info["routed_experts"]``: base64 of the flat ids (int32;
narrower integer types in versions that let the wire type be chosen), [tokens, layers, k]
with tokens = ``prompt_tokens + completion_tokens - 1`` (the last sampled token is never run
through the model). The bytes carry no shape, so layers and k come from the saved line's
``"shape"`` (which `moefast record` writes) or the ``num_layers=`` and ``k=`` options.
vLLM (``--enable-return-routed-experts``) answers ``/v1/completions`` with each choice's
``routed_experts``: base64 of a ``.npy`` file [tokens - 1, layers, k] (older versions: nested
lists). Layers are the model's MoE layers, numbered from 0.

A line is a response, or ``{"id": ..., "engine": ..., "shape": [layers, k], "response": {...}}``
as `moefast record` writes them. Each line is one request: its tokens get one request id
(the line's ``id``, else the response's; integers kept, other ids numbered in order).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moefast._util.checks import MAX_LAYERS, check_field_int, check_int
from moefast.io.readers._errors import malformed
from moefast.io.readers._loading import parse_json
from moefast.trace import MAX_EXPERTS, Trace

ENGINES = ("sglang", "vllm")

#: What a response without routed experts means.
FLAG_OFF = (
    "the response holds no routed experts: start the server with"
    " --enable-return-routed-experts (SGLang also needs the request field"
    ' "return_routed_experts": true)'
)


def _b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        kind = type(text).__name__
        raise ValueError(f"{where}: routed_experts must be a base64 string, got {kind}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{where}: routed_experts is not base64 ({err})") from err


def response_engine(response: Mapping[str, Any]) -> str:
    """``"sglang"`` for a ``/generate`` answer (``meta_info``), ``"vllm"`` for an OpenAI-style
    one (``choices``)."""
    if isinstance(response.get("meta_info"), Mapping):
        return "sglang"
    if isinstance(response.get("choices"), list):
        return "vllm"
    raise ValueError("neither an SGLang /generate response (meta_info) nor a vLLM one (choices)")


def sglang_routed_experts(
    response: Mapping[str, Any], num_layers: int | None, k: int | None
) -> np.ndarray:
    """int64 [tokens, layers, k] of an SGLang ``/generate`` response."""
    meta = response["meta_info"]
    encoded = meta.get("routed_experts")
    if encoded is None:
        raise ValueError(FLAG_OFF)
    if num_layers is None or k is None:
        raise ValueError(
            "SGLang returns routed experts as flat bytes without their shape: give the"
            " model's number of MoE layers and top-k (num_layers= and k=, or"
            " --num-layers and --top-k)"
        )
    raw = _b64(encoded, "meta_info")
    tokens = check_int("prompt_tokens", meta.get("prompt_tokens"), 0) + check_int(
        "completion_tokens", meta.get("completion_tokens"), 0
    )
    tokens = max(tokens - 1, 0)
    if tokens == 0:
        return np.zeros((0, num_layers, k), dtype=np.int64)
    ids = tokens * num_layers * k
    widths: dict[int, str] = {4 * ids: "<i4", 2 * ids: "<u2", ids: "u1"}
    width = widths.get(len(raw))
    if width is None:
        raise ValueError(
            f"routed_experts holds {len(raw)} bytes, not {ids} ids ({tokens} tokens x"
            f" {num_layers} layers x k = {k}) of 4, 2 or 1 bytes: are num_layers and k the"
            " model's?"
        )
    return np.frombuffer(raw, dtype=width).astype(np.int64).reshape(tokens, num_layers, k)


def vllm_routed_experts(response: Mapping[str, Any]) -> np.ndarray:
    """int64 [tokens, layers, k] of a vLLM completion (its first choice)."""
    choices = response["choices"]
    if len(choices) != 1 or not isinstance(choices[0], Mapping):
        raise ValueError(f"expected one choice per request (n = 1), got {len(choices)}")
    value = choices[0].get("routed_experts")
    if value is None:
        raise ValueError(FLAG_OFF)
    if isinstance(value, str):
        try:
            ids = np.load(io.BytesIO(_b64(value, "choices[0]")), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"choices[0].routed_experts is not a .npy array ({err})") from err
    else:
        try:
            ids = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"choices[0].routed_experts is not an array ({err})") from err
    if ids.ndim != 3 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(
            f"routed_experts must be int [tokens, layers, k], got {ids.dtype} {ids.shape}"
        )
    return ids.astype(np.int64)


def routed_experts(
    line: Mapping[str, Any], num_layers: int | None = None, k: int | None = None
) -> tuple[Any, np.ndarray]:
    """(request id, int64 [tokens, layers, k]) of one saved line."""
    response = line.get("response", line)
    if not isinstance(response, Mapping):
        raise ValueError("'response' must be a JSON object")
    shape = line.get("shape")
    if shape is not None:
        if not isinstance(shape, list) or len(shape) != 2:
            raise ValueError(f"'shape' must be [layers, k], got {shape!r}")
        num_layers, k = shape
    if num_layers is not None:
        num_layers = check_int("num_layers", num_layers, 1, MAX_LAYERS)
    if k is not None:
        k = check_int("k", k, 1, MAX_EXPERTS)
    engine = line.get("engine") or response_engine(response)
    if engine == "sglang":
        ids = sglang_routed_experts(response, num_layers, k)
        default_id = response["meta_info"].get("id")
    elif engine == "vllm":
        ids = vllm_routed_experts(response)
        default_id = response.get("id")
    else:
        raise ValueError(f"unknown engine {engine!r}; known: {ENGINES}")
    return line.get("id", default_id), ids


def iter_lines(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line number, JSON object) of each non-blank line."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, text in enumerate(f, 1):
                if text.strip():
                    value = parse_json(text, path, number)
                    if not isinstance(value, dict):
                        raise malformed(path, "each line must be a JSON object", number)
                    yield number, value
    except UnicodeDecodeError as err:
        raise malformed(path, f"not UTF-8 text (byte {err.start}: {err.reason})") from err


def read_routed_trace(
    path: Path,
    num_experts: int | None = None,
    num_layers: int | None = None,
    k: int | None = None,
) -> Trace:
    """A trace of a JSON Lines file of saved responses carrying routed experts."""
    blocks: list[np.ndarray] = []
    names: list[Any] = []
    for number, line in iter_lines(path):
        try:
            name, ids = routed_experts(line, num_layers, k)
        except (KeyError, TypeError, ValueError) as err:
            raise malformed(path, str(err), number) from err
        if blocks and ids.shape[1:] != blocks[0].shape[1:]:
            got, want = list(ids.shape[1:]), list(blocks[0].shape[1:])
            raise malformed(path, f"[layers, k] = {got}, not {want} as before", number)
        if isinstance(name, bool) or not isinstance(name, (int, str)):
            raise malformed(path, f"request id {name!r} must be a string or an integer", number)
        blocks.append(ids)
        names.append(name)
    if not blocks or not sum(len(b) for b in blocks):
        raise malformed(path, "no response holds any routed token")
    if all(isinstance(n, int) and not isinstance(n, bool) for n in names):
        numbers = [int(n) for n in names]
    else:
        order: dict[Any, int] = {}
        numbers = [order.setdefault((type(n).__name__, n), len(order)) for n in names]
    topk = np.concatenate(blocks)
    request_ids = np.repeat(np.asarray(numbers, dtype=np.int64), [len(b) for b in blocks])
    highest = int(topk.max()) + 1 if topk.size else 1
    if topk.size and int(topk.min()) < 0:
        raise malformed(path, f"expert id {int(topk.min())} is negative")
    if num_experts is None:
        num_experts = highest
    else:
        num_experts = check_field_int(path, "num_experts", num_experts, 1, MAX_EXPERTS)
        if highest > num_experts:
            raise malformed(
                path, f"expert id {highest - 1} out of range for num_experts = {num_experts}"
            )
    try:
        return Trace(topk, num_experts, request_ids=request_ids)
    except (ValueError, TypeError) as err:
        raise malformed(path, str(err)) from err
