"""JSON Lines traces as research patches log them: one record per (token, layer),
``{"layer": l, "experts": [ids], "token_idx": i, ...}``.

Records may come in any order; other fields (``gating_probs``, ...) are ignored. An optional
``request_id`` separates tokens of different requests that share a ``token_idx`` and becomes the
trace's ``request_ids`` (numbered in sorted order of the ids). Tokens that lack some layer are
dropped with a warning that counts them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moefast.readers._errors import malformed
from moefast.trace import MAX_EXPERTS, Trace


def _int_field(record: dict, name: str, path: Path, line: int) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise malformed(path, f"'{name}' must be an integer, got {value!r}", line)
    return value


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's non-blank lines and their numbers; ValueError naming the file if it cannot
    be read (errors of the caller's, raised while the file is open, pass through)."""
    try:
        with open(path, encoding="utf-8") as handle:
            yield from ((n, text) for n, text in enumerate(handle, start=1) if text.strip())
    except (OSError, UnicodeDecodeError) as err:
        raise malformed(path, f"cannot read ({err})") from err


def read_jsonl_trace(path: Path, num_experts: int | None = None) -> Trace:
    """``num_experts`` defaults to the largest id seen plus one."""
    rows: dict[tuple, dict[int, list[int]]] = {}
    k = None
    has_request_ids = False
    for line_no, text in _lines(path):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise malformed(path, f"not JSON ({err.msg})", line_no) from err
        if not isinstance(record, dict):
            raise malformed(path, "a record must be a JSON object", line_no)
        layer = _int_field(record, "layer", path, line_no)
        token = _int_field(record, "token_idx", path, line_no)
        experts = record.get("experts")
        if (
            not isinstance(experts, list)
            or not experts
            or not all(isinstance(e, int) and not isinstance(e, bool) for e in experts)
        ):
            raise malformed(
                path, f"'experts' must be a list of integer ids, got {experts!r}", line_no
            )
        if k is None:
            k = len(experts)
        elif len(experts) != k:
            raise malformed(path, f"{len(experts)} experts where earlier records have {k}", line_no)
        if min(experts) < 0:
            raise malformed(path, f"negative expert id in {experts}", line_no)
        if max(experts) >= MAX_EXPERTS:  # and so beyond int64 ids fail here, not in numpy
            raise malformed(
                path, f"expert id {max(experts)} out of range [0, {MAX_EXPERTS})", line_no
            )
        if len(set(experts)) != len(experts):
            raise malformed(path, f"an expert appears twice in {experts}", line_no)
        has_request_ids = has_request_ids or "request_id" in record
        key = (str(record.get("request_id", "")), token)
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
        names = sorted({key[0] for key in complete})
        number = {name: i for i, name in enumerate(names)}
        request_ids = np.array([number[key[0]] for key in complete], dtype=np.int64)
    return Trace(topk, num_experts, layer_ids, request_ids=request_ids)
