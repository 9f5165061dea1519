"""TensorRT-LLM's MoE load-balancer YAML: num_slots and initial_global_assignments for every
MoE layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moefast._util.checks import check_field_int
from moefast.io.engines.slots import (
    engine_rows,
    from_maps,
    layer_key,
    need,
)
from moefast.io.layouts import ModelLayout
from moefast.placement import ModelPlacement


def write(model: ModelPlacement, layout: ModelLayout, mtp: bool | None) -> dict[str, Any]:
    """The load-balancer file; ``mtp`` None: the model's MTP layers too (the engine looks
    them up under speculative decoding; an unused row is harmless), without a warning."""
    ids, rows = engine_rows(model, layout, mtp is not False, quiet_mtp=mtp is None)
    return {
        "num_slots": int(rows.shape[1]),
        "initial_global_assignments": {
            int(layer): row.tolist() for layer, row in zip(ids, rows, strict=True)
        },
        "layer_updates_per_iter": 0,
    }


def read(path: Path, data: dict, num_gpus: int | None, num_experts: int | None) -> ModelPlacement:
    """A placement from a TensorRT-LLM load-balancer file; ``num_gpus`` is needed."""
    assignments = data["initial_global_assignments"]
    if not isinstance(assignments, dict) or not assignments:
        raise ValueError(f"{path}: initial_global_assignments must map layer -> slots")
    g = need(num_gpus, "num_gpus", path, "trtllm")
    by_layer: dict[int, Any] = {}
    for key, row in assignments.items():
        layer = layer_key(key, path)
        if layer in by_layer:
            raise ValueError(f"{path}: layer {layer} appears twice in initial_global_assignments")
        by_layer[layer] = row
    layers = sorted(by_layer)
    model = from_maps([by_layer[layer] for layer in layers], layers, g, num_experts, path)
    if "num_slots" in data:
        slots = check_field_int(path, "num_slots", data["num_slots"], 1)
        if slots != model.num_gpus * model.slots_per_gpu:
            raise ValueError(
                f"{path}: num_slots = {slots} but layers hold"
                f" {model.num_gpus * model.slots_per_gpu} slots"
            )
    return model
