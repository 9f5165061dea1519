"""DeepSeek EPLB's arrays (phy2log, log2phy, logcnt), one row per MoE layer, with num_gpus and
layer_ids; no engine reads this file as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import MAX_GPUS
from moefast._util.checks import check_field_int
from moefast.io.engines.slots import (
    as_list,
    engine_rows,
    from_maps,
    layer_ids_field,
    need,
    physical_to_logical,
)
from moefast.io.layouts import ModelLayout
from moefast.placement import ModelPlacement


def write(model: ModelPlacement, layout: ModelLayout | None) -> dict[str, Any]:

    if layout is None:
        layer_ids, phy2log = list(model.layer_ids), physical_to_logical(model)
    else:
        layer_ids, phy2log = engine_rows(model, layout)
    log2phy, logcnt = logical_maps(phy2log, model.num_experts)
    return {
        "phy2log": phy2log.tolist(),
        "log2phy": log2phy.tolist(),
        "logcnt": logcnt.tolist(),
        "num_gpus": model.num_gpus,
        "layer_ids": layer_ids,
    }


def logical_maps(phy2log: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """log2phy [L, E, X] (-1 padded, slots in ascending order) and logcnt [L, E] (slots per
    expert; each row sums to P) of a physical-to-logical map [L, P]."""
    phy2log = np.asarray(phy2log, dtype=np.int64)
    layers, slots = phy2log.shape
    logcnt = np.stack([np.bincount(row, minlength=num_experts) for row in phy2log])
    log2phy = np.full((layers, num_experts, max(int(logcnt.max()), 1)), -1, dtype=np.int64)
    for layer, row in enumerate(phy2log):
        order = np.argsort(row, kind="stable")  # slots of expert 0 first, ascending
        rank = np.arange(slots) - np.repeat(np.cumsum(logcnt[layer]) - logcnt[layer], logcnt[layer])
        log2phy[layer, row[order], rank] = order
    return log2phy, logcnt


def read(path: Path, data: dict, num_gpus: int | None, num_experts: int | None) -> ModelPlacement:
    """A placement from EPLB arrays; ``logcnt``, when present, must agree with ``phy2log``."""
    rows = as_list(data["phy2log"], path, "phy2log")
    g = num_gpus if num_gpus is not None else need(data.get("num_gpus"), "num_gpus", path, "eplb")
    if data.get("num_gpus") is not None:
        stored_gpus = check_field_int(path, "num_gpus", data["num_gpus"], 1, MAX_GPUS)
        if num_gpus is not None and stored_gpus != num_gpus:
            raise ValueError(f"{path}: the file has num_gpus = {stored_gpus}, not {num_gpus}")
    stored = data.get("layer_ids")
    ids = list(range(len(rows))) if stored is None else layer_ids_field(stored, path)
    if len(ids) != len(rows):
        raise ValueError(f"{path}: {len(ids)} layer_ids for {len(rows)} rows of phy2log")
    model = from_maps(rows, ids, g, num_experts, path)
    if "logcnt" in data:
        try:
            counts = np.asarray(data["logcnt"])
        except (TypeError, ValueError, OverflowError, RecursionError) as err:
            raise ValueError(f"{path}: logcnt is not an array of counts ({err})") from err
        assert model.slots is not None  # from_maps keeps the map
        slots_per_expert = np.stack(
            [np.bincount(row, minlength=model.num_experts) for row in model.slots]
        )
        if counts.dtype.kind not in "iu" or not np.array_equal(counts, slots_per_expert):
            raise ValueError(f"{path}: logcnt disagrees with phy2log")
    return model
