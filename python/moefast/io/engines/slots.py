"""Slot maps shared by the engine formats: a GPU's experts in slot order, the physical-to-
logical map of a model, the engines' default map, and placements read back from maps.

A map read from an engine file (or made by EPLB) is kept as ``ModelPlacement.slots`` and
written back slot for slot, repeats included: SGLang and TensorRT-LLM route every slot of a
repeated expert; vLLM-Ascend keeps only one slot per expert on a device and misroutes, so its
writer refuses repeats (`refuse_repeats`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import MAX_GPUS, Placement
from moefast._util.checks import MAX_LAYERS, check_field_int
from moefast.io.layouts import ModelLayout
from moefast.placement import ModelPlacement
from moefast.trace import MAX_EXPERTS


def gpu_slots(placement: Placement, slots_per_gpu: int) -> np.ndarray:
    """int [G, slots_per_gpu]: the expert in each slot of each GPU, ascending on each GPU.

    Raises ValueError for a GPU with a free slot: engines fill every slot, and moefast pads
    none with a repeated expert (fill the free slots first: `ModelPlacement.filled`)."""
    replicas = placement.replicas
    rows = []
    for g in range(placement.num_gpus):
        experts = np.nonzero(replicas[:, g])[0]
        if experts.size != slots_per_gpu:
            raise ValueError(
                f"GPU {g} holds {experts.size} distinct experts for {slots_per_gpu} slots:"
                " engines load exactly slots_per_gpu experts per GPU (a repeated expert serves"
                " no token, and vLLM-Ascend misroutes it); fill the free slots with useful"
                " replicas first: ModelPlacement.filled(expert_load)"
            )
        rows.append(experts)
    return np.stack(rows).astype(np.int64)


def physical_to_logical(model: ModelPlacement) -> np.ndarray:
    """int [layers, G * slots_per_gpu]: the logical expert of each physical slot: the
    placement's slot map when it has one (as the engine holds it), else each GPU's experts
    ascending."""
    if model.slots is not None:
        return model.slots.copy()
    return np.stack([gpu_slots(p, model.slots_per_gpu).ravel() for p in model.placements])


def kept_slots(served: np.ndarray, placement: Placement, slots_per_gpu: int) -> np.ndarray | None:
    """The slot map of ``placement`` re-planned from the ``served`` map [G * slots_per_gpu]:
    each expert that stays on a GPU keeps its (first) slot there, and the experts new to the
    GPU take the freed slots in ascending order, so the slots whose expert changes are the
    copies. None when a GPU of ``placement`` has a free slot (no full map to write)."""
    served = np.asarray(served, dtype=np.int64).reshape(placement.num_gpus, slots_per_gpu)
    out = np.empty_like(served)
    replicas = placement.replicas
    for g, old in enumerate(served):
        new = np.nonzero(replicas[:, g])[0]
        if new.size != slots_per_gpu:
            return None
        row = np.full(slots_per_gpu, -1, dtype=np.int64)
        staying = set(new.tolist())
        for i, e in enumerate(old.tolist()):
            if e in staying:
                row[i] = e
                staying.discard(e)  # a repeat's second slot is freed
        arriving = [e for e in new.tolist() if e not in set(row.tolist())]
        row[row < 0] = arriving
        out[g] = row
    return out.ravel()


def default_map(num_slots: int, num_experts: int) -> np.ndarray:
    """The map engines start from without a placement file: slot p holds expert p % E."""
    return np.arange(num_slots) % num_experts


def placement_from_slots(
    layer_slots: Sequence[int] | np.ndarray,
    num_gpus: int,
    num_experts: int,
    where: str,
    distinct: bool = False,
) -> Placement:
    """The placement of one layer's physical map (slot p on GPU p // (P / num_gpus));
    ``distinct``: refuse a GPU that lists an expert twice, as the writers do."""
    slots = np.asarray(layer_slots)
    if slots.ndim != 1 or slots.dtype.kind not in "iu":
        raise ValueError(f"{where}: a layer's map must be a list of integer expert ids")
    if num_gpus < 1 or slots.size % num_gpus:
        raise ValueError(f"{where}: {slots.size} slots cannot be split over {num_gpus} GPUs")
    if slots.size and (slots.min() < 0 or slots.max() >= num_experts):
        raise ValueError(f"{where}: expert id out of range [0, {num_experts}) in the map")
    per_gpu = slots.size // num_gpus
    # As the writers refuse it (`gpu_slots`): a GPU listing one expert twice misroutes.
    for g, row in enumerate(slots.reshape(num_gpus, per_gpu) if distinct else ()):
        if np.unique(row).size != per_gpu:
            raise ValueError(
                f"{where}: GPU {g} lists an expert twice ({row.tolist()}): each GPU holds"
                f" {per_gpu} distinct experts"
            )
    replicas = np.zeros((num_experts, num_gpus), dtype=bool)
    replicas[slots, np.arange(slots.size) // per_gpu] = True
    missing = np.nonzero(~replicas.any(axis=1))[0]
    if missing.size:
        raise ValueError(f"{where}: expert {int(missing[0])} has no slot")
    return Placement(replicas)


def engine_rows(
    model: ModelPlacement, layout: ModelLayout, mtp: bool = False, quiet_mtp: bool = False
) -> tuple[list[int], np.ndarray]:
    """The model's MoE layer ids (then its MTP layers, with ``mtp`` or when the placement has
    them) and their maps [rows, P]; layers the placement lacks get `default_map`, with a
    warning (none for MTP layers with ``quiet_mtp``: rows the engine needs by default)."""
    layout.check_layers(model.layer_ids, model.num_experts)
    p2l = physical_to_logical(model)
    mine = dict(zip(model.layer_ids, p2l, strict=True))
    wanted = list(layout.moe_layers)
    if mtp or any(x in mine for x in layout.mtp_layers):
        wanted += list(layout.mtp_layers)
    quiet = set(layout.mtp_layers) if quiet_mtp else set()
    missing = [x for x in wanted if x not in mine and x not in quiet]
    if missing:
        warnings.warn(
            f"layers {missing} of {layout.name} have no placement: they get the default map"
            " (slot p holds expert p % E)",
            stacklevel=3,
        )
    trivial = default_map(p2l.shape[1], model.num_experts)
    return wanted, np.stack([mine.get(x, trivial) for x in wanted])


def refuse_repeats(layer_ids: Sequence[int], rows: np.ndarray, num_gpus: int, engine: str) -> None:
    """ValueError naming the first GPU that holds an expert in two slots, for an engine that
    routes only one slot per expert on a device (vLLM-Ascend)."""
    per_gpu = rows.shape[1] // num_gpus
    for layer, row in zip(layer_ids, rows, strict=True):
        for g, experts in enumerate(row.reshape(num_gpus, per_gpu)):
            values, counts = np.unique(experts, return_counts=True)
            if (counts > 1).any():
                raise ValueError(
                    f"layer {layer}: GPU {g} holds expert {int(values[counts > 1][0])} in two"
                    f" slots; {engine} maps each expert to one local slot of a device (the"
                    " last), so a repeat misroutes tokens (SGLang and TensorRT-LLM load it);"
                    " give the repeated slots useful replicas first:"
                    " ModelPlacement.filled(expert_load)"
                )


def need(value: Any, name: str, path: Path, fmt: str) -> Any:
    if value is None:
        raise ValueError(f"{path}: the {fmt} format does not record {name}; pass {name}=")
    return value


def slot_row(row: Any, where: str) -> np.ndarray:
    """One layer's physical map: a list of expert ids in [0, MAX_EXPERTS), checked before any
    array is sized by them (an id of 3e9 would otherwise allocate gigabytes)."""
    # No dtype= here: it would truncate 1.5 to 1 and read true as 1; ints beyond int64 come
    # out as dtype object.
    try:
        a = np.asarray(row)
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        raise ValueError(f"{where}: the map is not a list of integers ({err})") from err
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise ValueError(f"{where}: the map is not a list of integers (holds {a.dtype} values)")
    if a.size == 0:
        raise ValueError(f"{where}: the map is empty")
    if a.min() < 0 or a.max() >= MAX_EXPERTS:
        bad = a.min() if a.min() < 0 else a.max()
        raise ValueError(f"{where}: expert id {bad} out of range [0, {MAX_EXPERTS})")
    return a.astype(np.int64)


def from_maps(
    rows: Sequence[Any],
    layer_ids: list[int],
    num_gpus: int,
    num_experts: int | None,
    path: Path,
) -> ModelPlacement:
    """A placement of maps [layers][P] as the engine holds them: repeats kept in ``slots``."""
    if not rows:
        raise ValueError(f"{path}: no layer in the file")
    num_gpus = check_field_int(path, "num_gpus", num_gpus, 1, MAX_GPUS)
    arrays = [
        slot_row(r, f"{path}: layer {layer}") for layer, r in zip(layer_ids, rows, strict=True)
    ]
    sizes = {a.size for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"{path}: layers have different slot counts {sorted(sizes)}")
    if num_experts is None:
        num_experts = int(max(a.max() for a in arrays)) + 1
    placements = [
        placement_from_slots(a, num_gpus, num_experts, f"{path}: layer {layer}")
        for a, layer in zip(arrays, layer_ids, strict=True)
    ]
    return ModelPlacement(placements, sizes.pop() // num_gpus, layer_ids, slots=np.stack(arrays))


def as_list(value: Any, path: Path, name: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{path}: {name} must be a list, got {type(value).__name__}")
    if len(value) > MAX_LAYERS:
        raise ValueError(f"{path}: {name} has {len(value)} layers, more than {MAX_LAYERS}")
    return value


def layer_ids_field(values: Any, path: Path, name: str = "layer_ids") -> list[int]:
    return [
        check_field_int(path, f"{name}[{i}]", x, 0, MAX_LAYERS - 1)
        for i, x in enumerate(as_list(values, path, name))
    ]


def layer_key(key: Any, path: Path) -> int:
    """A layer number keying initial_global_assignments: an int, or (JSON keys are text)
    its decimal digits; true is not layer 1."""
    if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 9:
        key = int(key)
    return check_field_int(path, f"initial_global_assignments key {key!r}", key, 0, MAX_LAYERS - 1)
