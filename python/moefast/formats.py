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
from moefast.optimizers import MAX_GPUS
from moefast.trace import MAX_EXPERTS
from moefast.validation import MAX_LAYERS, check_field_int, check_int, check_layer_ids

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
    if num_layers is not None:
        num_layers = check_int("num_layers", num_layers, 1, MAX_LAYERS)
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
    if not isinstance(model, ModelPlacement):
        raise TypeError(f"model must be a ModelPlacement, got {type(model).__name__}")
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
    try:
        text = json.dumps(data, default=_plain, allow_nan=False)
    except ValueError as err:  # NaN or inf: not JSON, and the engines' parsers refuse it
        raise ValueError(
            f"cannot write {path}: the placement holds a NaN or infinite number (in its"
            f" costs or settings), which JSON cannot represent ({err})"
        ) from None
    write_text(path, text + "\n")


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
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from err
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
        except RecursionError as err:
            raise ValueError(f"{path}: YAML nested too deeply to read") from err
        except (ValueError, OverflowError, TypeError) as err:  # values the constructors refuse
            raise ValueError(f"{path}: not YAML this program can read ({err})") from err
    from moefast.readers._loading import parse_json

    return parse_json(text, path)


def _need(value: Any, name: str, path: Path, fmt: str) -> Any:
    if value is None:
        raise ValueError(f"{path}: the {fmt} format does not record {name}; pass {name}=")
    return value


def _map(row: Any, where: str) -> np.ndarray:
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


def _from_maps(
    rows: Sequence[Any],
    layer_ids: list[int],
    num_gpus: int,
    num_experts: int | None,
    path: Path,
) -> ModelPlacement:
    if not rows:
        raise ValueError(f"{path}: no layer in the file")
    num_gpus = check_field_int(path, "num_gpus", num_gpus, 1, MAX_GPUS)
    arrays = [_map(r, f"{path}: layer {layer}") for layer, r in zip(layer_ids, rows, strict=True)]
    sizes = {a.size for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"{path}: layers have different slot counts {sorted(sizes)}")
    if num_experts is None:
        num_experts = int(max(a.max() for a in arrays)) + 1
    placements = [
        placement_from_slots(a, num_gpus, num_experts, f"{path}: layer {layer}")
        for a, layer in zip(arrays, layer_ids, strict=True)
    ]
    return ModelPlacement(placements, sizes.pop() // num_gpus, layer_ids)


def _list(value: Any, path: Path, name: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{path}: {name} must be a list, got {type(value).__name__}")
    if len(value) > MAX_LAYERS:
        raise ValueError(f"{path}: {name} has {len(value)} layers, more than {MAX_LAYERS}")
    return value


def _layer_ids(values: Any, path: Path, name: str = "layer_ids") -> list[int]:
    return [
        check_field_int(path, f"{name}[{i}]", x, 0, MAX_LAYERS - 1)
        for i, x in enumerate(_list(values, path, name))
    ]


def _layer_key(key: Any, path: Path) -> int:
    """A layer number keying initial_global_assignments: an int, or (JSON keys are text)
    its decimal digits; true is not layer 1."""
    if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 9:
        key = int(key)
    return check_field_int(path, f"initial_global_assignments key {key!r}", key, 0, MAX_LAYERS - 1)


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
    if format is not None and format not in PLACEMENT_FORMATS:
        raise ValueError(f"unknown placement format {format!r}; known: {PLACEMENT_FORMATS}")
    if num_gpus is not None:
        num_gpus = check_int("num_gpus", num_gpus, 1, MAX_GPUS)
    if num_experts is not None:
        num_experts = check_int("num_experts", num_experts, 1, MAX_EXPERTS)
    if layer_ids is not None:
        layer_ids = check_layer_ids(layer_ids)
    data = _read(path)
    fmt = format or _guess(path, data)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        model = _load(path, data, fmt, num_gpus, num_experts)
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} for the {fmt} format") from err
    except (TypeError, AttributeError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
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
        g = check_field_int(path, "num_gpus", data["num_gpus"], 1, MAX_GPUS)
        slots = check_field_int(path, "slots_per_gpu", data["slots_per_gpu"], 1, MAX_EXPERTS)
        replicas = _list(data["replicas"], path, "replicas")
        placements = [Placement.from_lists(_list(lists, path, "a layer"), g) for lists in replicas]
        costs: dict[str, Any] = {}
        for name in ("layer_costs", "lower_bounds"):
            values = data.get(name)
            if values is not None:
                values = _list(values, path, name)
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    raise ValueError(f"{path}: {name} must hold numbers")
            costs[name] = values
        settings = data.get("settings") or {}
        if not isinstance(settings, dict):
            raise ValueError(f"{path}: settings must be a mapping")
        return ModelPlacement(
            placements,
            slots,
            _layer_ids(data["layer_ids"], path),
            costs["layer_costs"],
            costs["lower_bounds"],
            settings,
        )
    if fmt == "sglang":
        rows = _list(data["physical_to_logical_map"], path, "physical_to_logical_map")
        g = _need(num_gpus, "num_gpus", path, fmt)
        return _from_maps(rows, list(range(len(rows))), g, num_experts, path)
    if fmt == "eplb":
        rows = _list(data["phy2log"], path, "phy2log")
        g = num_gpus if num_gpus is not None else _need(data.get("num_gpus"), "num_gpus", path, fmt)
        if data.get("num_gpus") is not None:
            stored_gpus = check_field_int(path, "num_gpus", data["num_gpus"], 1, MAX_GPUS)
            if num_gpus is not None and stored_gpus != num_gpus:
                raise ValueError(f"{path}: the file has num_gpus = {stored_gpus}, not {num_gpus}")
        stored = data.get("layer_ids")
        ids = list(range(len(rows))) if stored is None else _layer_ids(stored, path)
        if len(ids) != len(rows):
            raise ValueError(f"{path}: {len(ids)} layer_ids for {len(rows)} rows of phy2log")
        model = _from_maps(rows, ids, g, num_experts, path)
        if "logcnt" in data:
            try:
                counts = np.asarray(data["logcnt"])
            except (TypeError, ValueError, OverflowError, RecursionError) as err:
                raise ValueError(f"{path}: logcnt is not an array of counts ({err})") from err
            if counts.dtype.kind not in "iu" or not np.array_equal(
                counts, model.replicas().sum(axis=2)
            ):
                raise ValueError(f"{path}: logcnt disagrees with phy2log")
        return model
    if fmt == "trtllm":
        assignments = data["initial_global_assignments"]
        if not isinstance(assignments, dict) or not assignments:
            raise ValueError(f"{path}: initial_global_assignments must map layer -> slots")
        g = _need(num_gpus, "num_gpus", path, fmt)
        by_layer: dict[int, Any] = {}
        for key, row in assignments.items():
            layer = _layer_key(key, path)
            if layer in by_layer:
                raise ValueError(
                    f"{path}: layer {layer} appears twice in initial_global_assignments"
                )
            by_layer[layer] = row
        layers = sorted(by_layer)
        model = _from_maps([by_layer[layer] for layer in layers], layers, g, num_experts, path)
        if "num_slots" in data:
            slots = check_field_int(path, "num_slots", data["num_slots"], 1)
            if slots != model.num_gpus * model.slots_per_gpu:
                raise ValueError(
                    f"{path}: num_slots = {slots} but layers hold"
                    f" {model.num_gpus * model.slots_per_gpu} slots"
                )
        return model
    if fmt == "vllm-ascend":
        layers = _list(data["layer_list"], path, "layer_list")
        rows, ids = [], []
        devices = None
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict):
                raise ValueError(f"{path}: layer_list[{i}] must be a mapping")
            devs = layer["device_list"]
            if not isinstance(devs, list) or not all(isinstance(d, dict) for d in devs):
                raise ValueError(f"{path}: layer_list[{i}].device_list must be a list of mappings")
            if devices is not None and len(devs) != devices:
                raise ValueError(
                    f"{path}: layer_list[{i}] has {len(devs)} devices, others {devices}"
                )
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
            layer_id = layer.get("layer_id", i)
            ids.append(
                check_field_int(path, f"layer_list[{i}].layer_id", layer_id, 0, MAX_LAYERS - 1)
            )
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: layer_list repeats a layer_id: {ids}")
        if num_gpus is not None and num_gpus != devices:
            raise ValueError(f"{path}: the file has {devices} devices, not num_gpus = {num_gpus}")
        return _from_maps(rows, ids, devices or 0, num_experts, path)
    raise ValueError(f"unknown placement format {fmt!r}; known: {PLACEMENT_FORMATS}")
