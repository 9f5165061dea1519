"""vLLM-Ascend's expert map JSON: layer_list of device_list of device_expert, read by MoE-layer
position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moefast.io.engines.slots import (
    as_list,
    engine_rows,
    from_maps,
    refuse_repeats,
)
from moefast.io.layouts import ModelLayout
from moefast.placement import ModelPlacement


def write(model: ModelPlacement, layout: ModelLayout, mtp: bool) -> dict[str, Any]:
    ids, rows = engine_rows(model, layout, mtp)
    refuse_repeats(ids, rows, model.num_gpus, "vLLM-Ascend")
    slots = model.slots_per_gpu
    layers = [
        {
            "layer_id": position,  # vLLM-Ascend reads layers by position and writes it here
            "device_count": model.num_gpus,
            "device_list": [
                {"device_id": g, "device_expert": row[g * slots : (g + 1) * slots].tolist()}
                for g in range(model.num_gpus)
            ],
        }
        for position, row in enumerate(rows)
    ]
    return {"moe_layer_count": len(layers), "layer_list": layers}


def read(path: Path, data: dict, num_gpus: int | None, num_experts: int | None) -> ModelPlacement:
    """A placement from a vLLM-Ascend expert map, layers by position."""
    layers = as_list(data["layer_list"], path, "layer_list")
    rows, ids = [], []
    devices = None
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ValueError(f"{path}: layer_list[{i}] must be a mapping")
        devs = layer["device_list"]
        if not isinstance(devs, list) or not all(isinstance(d, dict) for d in devs):
            raise ValueError(f"{path}: layer_list[{i}].device_list must be a list of mappings")
        if devices is not None and len(devs) != devices:
            raise ValueError(f"{path}: layer_list[{i}] has {len(devs)} devices, others {devices}")
        devices = len(devs)
        experts = [d["device_expert"] for d in devs]
        if not all(isinstance(e, list) for e in experts):
            raise ValueError(f"{path}: layer_list[{i}]: device_expert must be lists")
        counts = {len(e) for e in experts}
        if len(counts) != 1:
            raise ValueError(
                f"{path}: layer_list[{i}] devices hold different numbers of experts"
                f" {sorted(counts)}"
            )
        rows.append([e for d in experts for e in d])
        ids.append(i)  # vLLM-Ascend reads layers by position, never layer_id
    if num_gpus is not None and num_gpus != devices:
        raise ValueError(f"{path}: the file has {devices} devices, not num_gpus = {num_gpus}")
    return from_maps(rows, ids, devices or 0, num_experts, path)
