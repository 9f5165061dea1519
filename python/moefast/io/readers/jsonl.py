"""JSON Lines traces as research patches log them: one record per (token, layer),
``{"layer": l, "experts": [ids], "token_idx": i, ...}``.

Records may come in any order; other fields (``gating_probs``, ...) are ignored. An optional
``request_id`` separates tokens of different requests that share a ``token_idx`` and becomes the
trace's ``request_ids`` (numbered in sorted order of the ids). Tokens that lack some layer are
dropped with a warning that counts them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moefast._util.checks import MAX_LAYERS, check_int
from moefast.io.readers._errors import malformed
from moefast.io.readers._loading import expert_ids, parse_json
from moefast.trace import MAX_EXPERTS, Trace


def _int_field(record: dict, name: str, path: Path, line: int, low: int, high: int) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise malformed(path, f"'{name}' must be an integer, got {value!r}", line)
    if not low <= value < high:
        raise malformed(path, f"'{name}' = {value} out of range [{low}, {high})", line)
    return value


def _request(record: dict, path: Path, line: int) -> tuple[int, int | str]:
    """A sortable key of the optional ``request_id``: 1 and "1" (or null and "None") are
    different requests, not one."""
    value = record.get("request_id")
    if value is None:
        return (0, 0)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise malformed(path, f"'request_id' must be an integer or a string, got {value!r}", line)
    return (1, value) if isinstance(value, int) else (2, value)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's non-blank lines and their numbers; ValueError naming the file (and the
    line that is not UTF-8) if it cannot be read."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except OSError as err:
        raise malformed(path, f"cannot read ({err.strerror or err})") from err
    with handle:
        for n, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise malformed(
                    path, f"not UTF-8 text (byte {err.start}: {err.reason})", n
                ) from err
            if text.strip():
                yield n, text


def read_jsonl_trace(path: Path, num_experts: int | None = None) -> Trace:
    """``num_experts`` defaults to the largest id seen plus one."""
    if num_experts is not None:
        num_experts = check_int("num_experts", num_experts, 1, MAX_EXPERTS)
    rows: dict[tuple, dict[int, list[int]]] = {}
    k = None
    has_request_ids = False
    for line_no, text in _lines(path):
        record = parse_json(text, path, line_no)
        if not isinstance(record, dict):
            raise malformed(path, "a record must be a JSON object", line_no)
        layer = _int_field(record, "layer", path, line_no, 0, MAX_LAYERS)
        token = _int_field(record, "token_idx", path, line_no, -(2**63), 2**63)
        experts = expert_ids(record.get("experts"), path, "'experts'", line_no)
        if k is None:
            k = len(experts)
        elif len(experts) != k:
            raise malformed(path, f"{len(experts)} experts where earlier records have {k}", line_no)
        has_request_ids = has_request_ids or "request_id" in record
        key = (*_request(record, path, line_no), token)
        layers = rows.setdefault(key, {})
        if layer in layers:
            raise malformed(path, f"a second record for token {token} at layer {layer}", line_no)
        layers[layer] = experts
    if not rows:
        raise malformed(path, "no records")
    layer_ids = sorted({layer for layers in rows.values() for layer in layers})
    complete = [key for key in sorted(rows) if len(rows[key]) == len(layer_ids)]
    dropped = len(rows) - len(complete)
    if dropped:
        warnings.warn(
            f"{path}: dropped {dropped} of {len(rows)} tokens that lack records for some of"
            f" the {len(layer_ids)} layers",
            stacklevel=3,
        )
    if not complete:
        raise malformed(path, f"no token has records for all layers {layer_ids}")
    topk = np.array([[rows[key][layer] for layer in layer_ids] for key in complete], dtype=np.int64)
    seen = int(topk.max()) + 1
    if num_experts is None:
        num_experts = seen
    elif seen > num_experts:
        raise malformed(path, f"expert id {seen - 1} out of range for num_experts = {num_experts}")
    request_ids = None
    if has_request_ids:
        names = sorted({key[:2] for key in complete})
        number = {name: i for i, name in enumerate(names)}
        request_ids = np.array([number[key[:2]] for key in complete], dtype=np.int64)
    try:
        return Trace(topk, num_experts, layer_ids, request_ids=request_ids)
    except (ValueError, TypeError) as err:
        raise malformed(path, str(err)) from err
