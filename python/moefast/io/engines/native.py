"""moefast's own placement file: each layer's replica lists, expected costs, lower bounds and
the settings that produced the placement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import MAX_GPUS, Placement
from moefast._util.checks import check_field_int
from moefast.io.engines.slots import (
    as_list,
    layer_ids_field,
    slot_row,
)
from moefast.placement import ModelPlacement
from moefast.trace import MAX_EXPERTS

NATIVE_TAG = "moefast-placement"
#: The one version of the file this reader knows.
NATIVE_VERSION = 1


def write(model: ModelPlacement) -> dict[str, Any]:
    def floats(values):
        return None if values is None else [float(v) for v in values]

    data = {
        "format": NATIVE_TAG,
        "version": NATIVE_VERSION,
        "num_experts": model.num_experts,
        "num_gpus": model.num_gpus,
        "slots_per_gpu": model.slots_per_gpu,
        "layer_ids": list(model.layer_ids),
        "expected_cost": None if model.layer_costs is None else model.expected_cost,
        "layer_costs": floats(model.layer_costs),
        "lower_bounds": floats(model.lower_bounds),
        "settings": model.settings,
        "replicas": [[list(map(int, gpus)) for gpus in p.to_lists()] for p in model.placements],
    }
    if model.slots is not None:  # the engine's slot order, repeats included
        data["slots"] = model.slots.tolist()
    return data


def read(path: Path, data: dict, num_gpus: int | None, num_experts: int | None) -> ModelPlacement:
    """A placement from moefast's own file."""
    if data.get("format") != NATIVE_TAG:
        raise ValueError(f'{path}: not a moefast placement (no "format": "{NATIVE_TAG}")')
    version = data["version"]
    if isinstance(version, bool) or version != NATIVE_VERSION:
        raise ValueError(
            f"{path}: version {version!r} of the moefast placement format; this moefast reads"
            f" version {NATIVE_VERSION}"
        )
    g = check_field_int(path, "num_gpus", data["num_gpus"], 1, MAX_GPUS)
    slots = check_field_int(path, "slots_per_gpu", data["slots_per_gpu"], 1, MAX_EXPERTS)
    experts = check_field_int(path, "num_experts", data["num_experts"], 1, MAX_EXPERTS)
    replicas = as_list(data["replicas"], path, "replicas")
    placements = [Placement.from_lists(as_list(lists, path, "a layer"), g) for lists in replicas]
    for i, p in enumerate(placements):
        if p.num_experts != experts:
            raise ValueError(
                f"{path}: layer {i} places {p.num_experts} experts; the file says num_experts"
                f" = {experts}"
            )
    if num_experts is not None and experts != num_experts:
        raise ValueError(f"{path}: the placement has {experts} experts, not {num_experts}")
    costs: dict[str, Any] = {}
    for name in ("layer_costs", "lower_bounds"):
        values = data.get(name)
        if values is not None:
            values = as_list(values, path, name)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{path}: {name} must hold numbers")
        costs[name] = values
    slot_map = data.get("slots")
    if slot_map is not None:
        slot_map = [
            slot_row(r, f"{path}: slots[{i}]")
            for i, r in enumerate(as_list(slot_map, path, "slots"))
        ]
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: settings must be a mapping")
    return ModelPlacement(
        placements,
        slots,
        layer_ids_field(data["layer_ids"], path),
        costs["layer_costs"],
        costs["lower_bounds"],
        settings,
        slots=None if slot_map is None else _stacked(slot_map, path),
    )


def _stacked(rows: list, path: Path) -> Any:
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"{path}: slots rows have different lengths")
    return np.stack(rows)
