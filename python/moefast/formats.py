"""Placements in the formats inference engines load, and back.

Every engine numbers physical expert slots globally: slot p lives on GPU p // slots_per_gpu.
A `Placement` only says which GPUs hold which experts, so writers lay each GPU's experts out
in ascending id order; a GPU with free slots repeats its first expert there (same GPU, so the
replica sets, and every cost, stay the same). Loading any written file gives back the same
replica sets. Formats:

- ``"sglang"``: ``{"physical_to_logical_map": [layers][P]}`` for ``--init-expert-location``
  (launch SGLang with ``--ep-num-redundant-experts P - E``).
  SGLang passes every key of that file to its loader, so nothing else may be in it, and its rows
  are the model's layers 0..num_layers-1: layers without a placement (dense ones) get the
  trivial map p -> p % E. Reading needs ``num_gpus``.
- ``"eplb"``: ``phy2log`` [L, P], ``log2phy`` [L, E, X] (-1 padded), ``logcnt`` [L, E] as
  DeepSeek's EPLB returns them and vLLM keeps them, plus ``num_gpus`` and ``layer_ids``.
- ``"trtllm"``: TensorRT-LLM MoE load-balancer YAML (the ``moe_config.load_balancer``
  section): ``num_slots``, ``initial_global_assignments: {layer: [expert per slot]}``,
  ``layer_updates_per_iter: 0`` (static). Reading needs ``num_gpus``.
- ``"vllm-ascend"``: the expert-map JSON (``moe_layer_count``, ``layer_list`` of
  ``device_list`` of ``device_expert``); ``layer_id`` holds the model's layer number.
- ``"json"``: moefast's own, with each layer's replica lists, expected costs, lower bounds and
  the settings that produced the placement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import Placement
from moefast.atomic import write_text
from moefast.model import ModelPlacement

PLACEMENT_FORMATS = ("json", "sglang", "eplb", "trtllm", "vllm-ascend")
_NATIVE_TAG = "moefast-placement"


def gpu_slots(placement: Placement, slots_per_gpu: int) -> np.ndarray:
    """int [G, slots_per_gpu]: the expert in each slot of each GPU."""
    replicas = placement.replicas
    rows = []
    for g in range(placement.num_gpus):
        experts = np.nonzero(replicas[:, g])[0]
        if experts.size == 0:
            raise ValueError(
                f"GPU {g} holds no expert: engines need every slot filled, and no expert"
                " already on that GPU can fill them without changing the replica sets"
            )
        if experts.size > slots_per_gpu:
            raise ValueError(
                f"GPU {g} holds {experts.size} experts, more than {slots_per_gpu} slots"
            )
        fill = np.full(slots_per_gpu - experts.size, experts[0])
        rows.append(np.concatenate([experts, fill]))
    return np.stack(rows).astype(np.int64)


def physical_to_logical(model: ModelPlacement) -> np.ndarray:
    """int [layers, G * slots_per_gpu]: the logical expert of each physical slot."""
    return np.stack([gpu_slots(p, model.slots_per_gpu).ravel() for p in model.placements])


def placement_from_slots(
    layer_slots: Sequence[int] | np.ndarray, num_gpus: int, num_experts: int, where: str
) -> Placement:
    """The placement of one layer's physical map (slot p on GPU p // (P / num_gpus))."""
    slots = np.asarray(layer_slots)
    if slots.ndim != 1 or slots.dtype.kind not in "iu":
        raise ValueError(f"{where}: a layer's map must be a list of integer expert ids")
    if num_gpus < 1 or slots.size % num_gpus:
        raise ValueError(f"{where}: {slots.size} slots cannot be split over {num_gpus} GPUs")
    if slots.size and (slots.min() < 0 or slots.max() >= num_experts):
        raise ValueError(f"{where}: expert id out of range [0, {num_experts}) in the map")
    per_gpu = slots.size // num_gpus
    replicas = np.zeros((num_experts, num_gpus), dtype=bool)
    replicas[slots, np.arange(slots.size) // per_gpu] = True
    missing = np.nonzero(~replicas.any(axis=1))[0]
    if missing.size:
        raise ValueError(f"{where}: expert {int(missing[0])} has no slot")
    return Placement(replicas)


def _native(model: ModelPlacement) -> dict[str, Any]:
    def floats(values):
        return None if values is None else [float(v) for v in values]

    return {
        "format": _NATIVE_TAG,
        "version": 1,
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


def _eplb(model: ModelPlacement) -> dict[str, Any]:
    phy2log = physical_to_logical(model)
    replicas = model.replicas()  # [L, E, G]
    logcnt = replicas.sum(axis=2)
    width = int(logcnt.max())
    log2phy = np.full((len(model), model.num_experts, width), -1, dtype=np.int64)
    for layer, row in enumerate(phy2log):
        seen_on: set[tuple[int, int]] = set()
        count = np.zeros(model.num_experts, dtype=np.int64)
        for p, e in enumerate(row):
            gpu = p // model.slots_per_gpu
            # A filler slot repeats an expert on the same GPU: one replica, one entry.
            if (e, gpu) in seen_on:
                continue
            seen_on.add((e, gpu))
            log2phy[layer, e, count[e]] = p
            count[e] += 1
    return {
        "phy2log": phy2log.tolist(),
        "log2phy": log2phy.tolist(),
        "logcnt": logcnt.tolist(),
        "num_gpus": model.num_gpus,
        "layer_ids": list(model.layer_ids),
    }


def _sglang(model: ModelPlacement, num_layers: int | None) -> dict[str, Any]:
    p2l = physical_to_logical(model)
    num_layers = max(model.layer_ids) + 1 if num_layers is None else num_layers
    if num_layers <= max(model.layer_ids) or min(model.layer_ids) < 0:
        raise ValueError(f"num_layers = {num_layers} does not cover layer ids {model.layer_ids}")
    trivial = np.arange(p2l.shape[1]) % model.num_experts
    rows = [trivial] * num_layers
    for i, layer in enumerate(model.layer_ids):
        rows[layer] = p2l[i]
    return {"physical_to_logical_map": np.stack(rows).tolist()}


def _trtllm(model: ModelPlacement) -> dict[str, Any]:
    p2l = physical_to_logical(model)
    return {
        "num_slots": int(p2l.shape[1]),
        "initial_global_assignments": {
            int(layer): row.tolist() for layer, row in zip(model.layer_ids, p2l, strict=True)
        },
        "layer_updates_per_iter": 0,
    }


def _vllm_ascend(model: ModelPlacement) -> dict[str, Any]:
    layers = []
    for layer, p in zip(model.layer_ids, model.placements, strict=True):
        slots = gpu_slots(p, model.slots_per_gpu)
        layers.append(
            {
                "layer_id": int(layer),
                "device_count": model.num_gpus,
                "device_list": [
                    {"device_id": g, "device_expert": slots[g].tolist()}
                    for g in range(model.num_gpus)
                ],
            }
        )
    return {"moe_layer_count": len(model), "layer_list": layers}


def save_placement(
    model: ModelPlacement,
    path: str | os.PathLike,
    format: str = "json",
    num_layers: int | None = None,
) -> None:
    """Write ``model`` to ``path`` in ``format`` (one of `PLACEMENT_FORMATS`).

    ``num_layers`` (sglang only) is the model's total layer count, when layers after the last
    MoE layer exist.
    """
    path = Path(path)
    if num_layers is not None and format != "sglang":
        raise ValueError("num_layers applies to the sglang format only")
    if format == "trtllm":
        import yaml

        write_text(path, yaml.safe_dump(_trtllm(model), sort_keys=False, default_flow_style=None))
        return
    if format == "json":
        data = _native(model)
    elif format == "sglang":
        data = _sglang(model, num_layers)
    elif format == "eplb":
        data = _eplb(model)
    elif format == "vllm-ascend":
        data = _vllm_ascend(model)
    else:
        raise ValueError(f"unknown placement format {format!r}; known: {PLACEMENT_FORMATS}")
    write_text(path, json.dumps(data, default=_plain, allow_nan=False) + "\n")


def _plain(value: Any) -> Any:
    """numpy values in settings as JSON numbers and lists; anything else as its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _guess(path: Path, data: Any) -> str:
    if isinstance(data, dict):
        if data.get("format") == _NATIVE_TAG:
            return "json"
        if "physical_to_logical_map" in data:
            return "sglang"
        if "phy2log" in data:
            return "eplb"
        if "layer_list" in data:
            return "vllm-ascend"
        if "initial_global_assignments" in data:
            return "trtllm"
    raise ValueError(f"{path}: not a placement file of a known format ({PLACEMENT_FORMATS})")


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err})") from err
    except UnicodeDecodeError as err:  # a binary file (say a trace) given as the placement
        raise ValueError(f"{path}: not a placement file (not UTF-8 text: {err.reason})") from err
    # A TensorRT-LLM YAML may carry any name: text that is not JSON-shaped is read as YAML.
    if path.suffix.lower() in (".yaml", ".yml") or text.lstrip()[:1] not in ("{", "["):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f", line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{path}{line}: not YAML ({err})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: not JSON ({err.msg})") from err


def _need(value: Any, name: str, path: Path, fmt: str) -> Any:
    if value is None:
        raise ValueError(f"{path}: the {fmt} format does not record {name}; pass {name}=")
    return value


def _from_maps(
    rows: Sequence[Sequence[int]],
    layer_ids: list[int],
    num_gpus: int,
    num_experts: int | None,
    path: Path,
) -> ModelPlacement:
    arrays = []
    for layer, r in zip(layer_ids, rows, strict=True):
        # No dtype= here: it would truncate 1.5 to 1 and read true as 1; ints beyond
        # int64 come out as dtype object.
        try:
            a = np.asarray(r)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{path}: layer {layer}: the map is not a list of integers ({err})"
            ) from err
        if a.size and a.dtype.kind not in "iu":
            raise ValueError(
                f"{path}: layer {layer}: the map is not a list of integers (holds {a.dtype} values)"
            )
        arrays.append(a.astype(np.int64))
    if not arrays:
        raise ValueError(f"{path}: no layer in the file")
    if not all(a.size for a in arrays):
        raise ValueError(f"{path}: a layer's map is empty")
    if num_experts is None:
        num_experts = int(max(a.max() for a in arrays)) + 1
    placements = [
        placement_from_slots(a, num_gpus, num_experts, f"{path}: layer {layer}")
        for a, layer in zip(arrays, layer_ids, strict=True)
    ]
    sizes = {a.size for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"{path}: layers have different slot counts {sorted(sizes)}")
    return ModelPlacement(placements, sizes.pop() // num_gpus, layer_ids)


def load_placement(
    path: str | os.PathLike,
    format: str | None = None,
    num_gpus: int | None = None,
    num_experts: int | None = None,
    layer_ids: Sequence[int] | None = None,
) -> ModelPlacement:
    """Read a placement written by `save_placement` (or by an engine in the same format).

    ``num_gpus`` is needed for "sglang" and "trtllm", which do not record it; ``num_experts``
    defaults to the largest id seen plus one; ``layer_ids`` keeps only those layers (for
    "sglang", whose rows are all the model's layers, dense ones included).
    """
    path = Path(path)
    data = _read(path)
    fmt = format or _guess(path, data)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        model = _load(path, data, fmt, num_gpus, num_experts)
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} for the {fmt} format") from err
    except (TypeError, AttributeError) as err:
        raise ValueError(f"{path}: malformed {fmt} placement ({err})") from err
    if layer_ids is not None:
        index = {layer: i for i, layer in enumerate(model.layer_ids)}
        absent = [layer for layer in layer_ids if layer not in index]
        if absent:
            raise ValueError(f"{path}: no layer {absent[0]} in the file (has {model.layer_ids})")
        keep = [index[layer] for layer in layer_ids]
        model = ModelPlacement(
            [model.placements[i] for i in keep],
            model.slots_per_gpu,
            list(layer_ids),
            None if model.layer_costs is None else model.layer_costs[keep],
            None if model.lower_bounds is None else model.lower_bounds[keep],
            model.settings,
        )
    return model


def _load(
    path: Path, data: dict, fmt: str, num_gpus: int | None, num_experts: int | None
) -> ModelPlacement:
    if fmt == "json":
        if data.get("format") != _NATIVE_TAG:
            raise ValueError(f'{path}: not a moefast placement (no "format": "{_NATIVE_TAG}")')
        g = int(data["num_gpus"])
        placements = [Placement.from_lists(lists, g) for lists in data["replicas"]]
        return ModelPlacement(
            placements,
            int(data["slots_per_gpu"]),
            [int(x) for x in data["layer_ids"]],
            data.get("layer_costs"),
            data.get("lower_bounds"),
            data.get("settings") or {},
        )
    if fmt == "sglang":
        rows = data["physical_to_logical_map"]
        g = _need(num_gpus, "num_gpus", path, fmt)
        return _from_maps(rows, list(range(len(rows))), g, num_experts, path)
    if fmt == "eplb":
        rows = data["phy2log"]
        g = num_gpus if num_gpus is not None else _need(data.get("num_gpus"), "num_gpus", path, fmt)
        ids = data.get("layer_ids") or list(range(len(rows)))
        model = _from_maps(rows, [int(x) for x in ids], int(g), num_experts, path)
        logcnt = np.asarray(data.get("logcnt", []))
        if logcnt.size and not np.array_equal(logcnt, model.replicas().sum(axis=2)):
            raise ValueError(f"{path}: logcnt disagrees with phy2log")
        return model
    if fmt == "trtllm":
        assignments = data["initial_global_assignments"]
        if not isinstance(assignments, dict):
            raise ValueError(f"{path}: initial_global_assignments must map layer -> slots")
        g = _need(num_gpus, "num_gpus", path, fmt)
        layers = sorted(int(layer) for layer in assignments)
        rows = [assignments.get(layer, assignments.get(str(layer))) for layer in layers]
        model = _from_maps(rows, layers, g, num_experts, path)
        if "num_slots" in data and int(data["num_slots"]) != model.num_gpus * model.slots_per_gpu:
            raise ValueError(
                f"{path}: num_slots = {data['num_slots']} but layers hold"
                f" {model.num_gpus * model.slots_per_gpu} slots"
            )
        return model
    if fmt == "vllm-ascend":
        layers = data["layer_list"]
        rows, ids = [], []
        devices = None
        for i, layer in enumerate(layers):
            devs = layer["device_list"]
            if devices is not None and len(devs) != devices:
                raise ValueError(
                    f"{path}: layer_list[{i}] has {len(devs)} devices, others {devices}"
                )
            devices = len(devs)
            counts = {len(d["device_expert"]) for d in devs}
            if len(counts) != 1:
                raise ValueError(
                    f"{path}: layer_list[{i}] devices hold different numbers of experts"
                    f" {sorted(counts)}"
                )
            rows.append([e for d in devs for e in d["device_expert"]])
            ids.append(int(layer.get("layer_id", i)))
        if num_gpus is not None and num_gpus != devices:
            raise ValueError(f"{path}: the file has {devices} devices, not num_gpus = {num_gpus}")
        return _from_maps(rows, ids, int(devices or 0), num_experts, path)
    raise ValueError(f"unknown placement format {fmt!r}; known: {PLACEMENT_FORMATS}")
