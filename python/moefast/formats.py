"""Placements in the formats inference engines load, and back.

Every engine numbers physical expert slots globally: slot p lives on GPU p // slots_per_gpu.
Writers lay each GPU's experts out in ascending id order and refuse a GPU with a free slot:
engines load exactly slots_per_gpu distinct experts per GPU, and a repeated expert misroutes
tokens (fill free slots first: `ModelPlacement.filled`). Engine files are written with rows for
the right model layers only, so they need the model's layout (`moefast.models`: ``model=`` a
preset name, or ``num_layers=``/``moe_layers=``); placement layers that are not MoE layers of
the model are refused, and MoE layers the placement lacks get the engine's default map
p -> p % E. Formats, and how each engine reads them:

- ``"sglang"``: ``{"physical_to_logical_map": [num_layers][P]}`` for ``--init-expert-location``
  (a ``.json`` path; SGLang parses any other string as JSON text). SGLang passes every key of
  the file to its loader, so nothing else is in it; row l is decoder layer l (dense rows hold
  the default map; DeepSeek's NextN draft layer reads row 0).
- ``"eplb"``: ``phy2log`` [L, P], ``log2phy`` [L, E, X] (-1 padded), ``logcnt`` [L, E] (slots
  per expert) as DeepSeek's EPLB returns them, one row per MoE layer, plus ``num_gpus`` and
  ``layer_ids``. No engine reads this file as is (upstream vLLM has no initial-placement input).
- ``"trtllm"``: TensorRT-LLM MoE load-balancer YAML (``moe_config.load_balancer``): ``num_slots``,
  ``initial_global_assignments: {decoder layer: [expert per slot]}`` for every MoE layer,
  ``layer_updates_per_iter: 0`` (static). Rank r holds slots [r n, (r + 1) n).
- ``"vllm-ascend"``: the expert-map JSON (``moe_layer_count``, ``layer_list`` of
  ``device_list`` of ``device_expert``), read by MoE-layer position; ``layer_id`` holds the
  position as vLLM-Ascend's own writer does.
- ``"json"``: moefast's own, with each layer's replica lists, expected costs, lower bounds and
  the settings that produced the placement.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import Placement
from moefast.model import ModelPlacement
from moefast.models import PRESETS, ModelLayout, model_layout

PLACEMENT_FORMATS = ("json", "sglang", "eplb", "trtllm", "vllm-ascend")
_NATIVE_TAG = "moefast-placement"


def gpu_slots(placement: Placement, slots_per_gpu: int) -> np.ndarray:
    """int [G, slots_per_gpu]: the expert in each slot of each GPU, ascending on each GPU.

    Raises ValueError for a GPU with a free slot: engines need exactly ``slots_per_gpu``
    distinct experts per GPU (fill the free slots first: `ModelPlacement.filled`)."""
    replicas = placement.replicas
    rows = []
    for g in range(placement.num_gpus):
        experts = np.nonzero(replicas[:, g])[0]
        if experts.size != slots_per_gpu:
            raise ValueError(
                f"GPU {g} holds {experts.size} distinct experts for {slots_per_gpu} slots:"
                " engines load exactly slots_per_gpu distinct experts per GPU (a repeated expert"
                " misroutes tokens); fill the free slots with useful replicas first:"
                " ModelPlacement.filled(expert_load)"
            )
        rows.append(experts)
    return np.stack(rows).astype(np.int64)


def physical_to_logical(model: ModelPlacement) -> np.ndarray:
    """int [layers, G * slots_per_gpu]: the logical expert of each physical slot."""
    return np.stack([gpu_slots(p, model.slots_per_gpu).ravel() for p in model.placements])


def default_map(num_slots: int, num_experts: int) -> np.ndarray:
    """The map engines start from without a placement file: slot p holds expert p % E."""
    return np.arange(num_slots) % num_experts


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


def engine_rows(
    model: ModelPlacement, layout: ModelLayout, mtp: bool = False
) -> tuple[list[int], np.ndarray]:
    """The model's MoE layer ids (then its MTP layers, with ``mtp`` or when the placement has
    them) and their maps [rows, P]; MoE layers the placement lacks get `default_map`."""
    layout.check_layers(model.layer_ids, model.num_experts)
    p2l = physical_to_logical(model)
    mine = dict(zip(model.layer_ids, p2l, strict=True))
    wanted = list(layout.moe_layers)
    if mtp or any(x in mine for x in layout.mtp_layers):
        wanted += list(layout.mtp_layers)
    missing = [x for x in wanted if x not in mine]
    if missing:
        warnings.warn(
            f"layers {missing} of {layout.name} have no placement: they get the default map"
            " (slot p holds expert p % E)",
            stacklevel=3,
        )
    trivial = default_map(p2l.shape[1], model.num_experts)
    return wanted, np.stack([mine.get(x, trivial) for x in wanted])


def _eplb(model: ModelPlacement, layout: ModelLayout | None) -> dict[str, Any]:
    from moefast.eplb import logical_maps

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


def _sglang(model: ModelPlacement, layout: ModelLayout) -> dict[str, Any]:
    ids, rows = engine_rows(model, layout)
    table = np.tile(default_map(rows.shape[1], model.num_experts), (layout.num_layers, 1))
    for layer, row in zip(ids, rows, strict=True):
        if layer in layout.mtp_layers:
            # SGLang builds DeepSeek's NextN draft layer as decoder layer 0 (deepseek_nextn.py).
            if 0 in layout.moe_layers:
                raise ValueError(
                    f"{layout.name}: the MTP layer would read row 0, which is a MoE layer"
                )
            table[0] = row
        else:
            table[layer] = row
    return {"physical_to_logical_map": table.tolist()}


def _trtllm(model: ModelPlacement, layout: ModelLayout, mtp: bool) -> dict[str, Any]:
    ids, rows = engine_rows(model, layout, mtp)
    return {
        "num_slots": int(rows.shape[1]),
        "initial_global_assignments": {
            int(layer): row.tolist() for layer, row in zip(ids, rows, strict=True)
        },
        "layer_updates_per_iter": 0,
    }


def _vllm_ascend(model: ModelPlacement, layout: ModelLayout, mtp: bool) -> dict[str, Any]:
    _, rows = engine_rows(model, layout, mtp)
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


#: Formats an engine loads, and the file name suffixes it accepts.
_SUFFIXES = {"sglang": (".json",), "vllm-ascend": (".json",)}


def check_file_name(path: str | os.PathLike, format: str) -> None:
    """ValueError for an unknown format or a file name the engine would not load."""
    path = Path(path)
    if format not in PLACEMENT_FORMATS:
        raise ValueError(f"unknown placement format {format!r}; known: {PLACEMENT_FORMATS}")
    suffixes = _SUFFIXES.get(format)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{path}: the {format} engine loads only {' or '.join(suffixes)} files; name it"
            f" {path.with_suffix(suffixes[0]).name}"
        )


def launch_settings(
    format: str, path: str | os.PathLike, num_gpus: int, slots_per_gpu: int, num_experts: int
) -> dict[str, Any]:
    """What to give the engine to start it with the file written at ``path``."""
    g, slots, e = num_gpus, num_gpus * slots_per_gpu, num_experts
    redundant = slots - e
    if format == "sglang":
        flags = (
            f"--ep-size {g} --ep-num-redundant-experts {redundant} --init-expert-location {path}"
        )
        return {"engine": "SGLang", "command_line": flags}
    if format == "trtllm":
        return {
            "engine": "TensorRT-LLM",
            "moe_expert_parallel_size": g,
            "num_slots": slots,
            "extra_llm_api_options": f"moe_config:\n  load_balancer: {path}",
        }
    if format == "vllm-ascend":
        return {
            "engine": "vLLM-Ascend",
            "command_line": (
                f"--enable-expert-parallel (EP size {g})"
                f' --additional-config \'{{"expert_map_path": "{path}"}}\''
            ),
            "num_redundant_experts": redundant,
        }
    if format == "eplb":
        return {
            "engine": "none: DeepSeek EPLB's phy2log/log2phy/logcnt tensors, for code that calls"
            " EPLB (upstream vLLM has no initial-placement input)",
            "num_gpus": g,
            "num_redundant_experts": redundant,
        }
    return {"engine": "moefast (load_placement)"}


def save_placement(
    placement: ModelPlacement,
    path: str | os.PathLike,
    format: str = "json",
    model: str | ModelLayout | None = None,
    num_layers: int | None = None,
    moe_layers: Sequence[int] | None = None,
    mtp: bool = False,
) -> dict[str, Any]:
    """Write ``placement`` to ``path`` in ``format`` (one of `PLACEMENT_FORMATS`) and return the
    engine settings the file needs (`launch_settings`).

    ``model`` (a `moefast.models` preset name or layout), or ``num_layers``/``moe_layers``,
    give the model's layers; engine formats need them (the placement's ``settings["model"]``
    is used when none is given). ``mtp`` adds the model's MTP layers (TensorRT-LLM keys them
    after the main layers, vLLM-Ascend counts them after the MoE layers).
    """
    path = Path(path)
    check_file_name(path, format)
    if model is None and num_layers is None and moe_layers is None:
        model = placement.settings.get("model")
    layout = model_layout(model, num_layers, moe_layers)
    if layout is None and format in ("sglang", "trtllm", "vllm-ascend"):
        raise ValueError(
            f"the {format} file holds rows for the model's layers: say which model"
            f" (model='deepseek-v3'; presets: {', '.join(sorted(PRESETS))}) or give"
            " num_layers= and moe_layers="
        )
    if format == "trtllm":
        import yaml

        assert layout is not None
        text = yaml.safe_dump(
            _trtllm(placement, layout, mtp), sort_keys=False, default_flow_style=None
        )
        path.write_text(text)
        return launch_settings(
            format, path, placement.num_gpus, placement.slots_per_gpu, placement.num_experts
        )
    if format == "json":
        if layout is not None:
            layout.check_layers(placement.layer_ids, placement.num_experts)
        data = _native(placement)
    elif format == "sglang":
        assert layout is not None
        data = _sglang(placement, layout)
    elif format == "eplb":
        data = _eplb(placement, layout)
    else:
        assert layout is not None
        data = _vllm_ascend(placement, layout, mtp)
    path.write_text(json.dumps(data, default=_plain) + "\n")
    return launch_settings(
        format, path, placement.num_gpus, placement.slots_per_gpu, placement.num_experts
    )


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
    model: str | ModelLayout | None = None,
) -> ModelPlacement:
    """Read a placement written by `save_placement` (or by an engine in the same format).

    ``num_gpus`` is needed for "sglang" and "trtllm", which do not record it; ``num_experts``
    defaults to the largest id seen plus one; ``layer_ids`` keeps only those layers (for
    "sglang", whose rows are all the model's layers, dense ones included). ``model`` (a
    `moefast.models` preset or layout) names the layers as the engine does: vLLM-Ascend's
    positions become the model's MoE layer ids, and an SGLang file keeps its MoE rows.
    """
    path = Path(path)
    data = _read(path)
    fmt = format or _guess(path, data)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        loaded = _load(path, data, fmt, num_gpus, num_experts)
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} for the {fmt} format") from err
    except (TypeError, AttributeError) as err:
        raise ValueError(f"{path}: malformed {fmt} placement ({err})") from err
    layout = model_layout(model)
    if layout is not None and fmt == "vllm-ascend":
        ids = list(layout.moe_layers) + list(layout.mtp_layers)
        if len(loaded) > len(ids):
            raise ValueError(f"{path}: {len(loaded)} layers; {layout.describe()}")
        loaded = ModelPlacement(loaded.placements, loaded.slots_per_gpu, ids[: len(loaded)])
    elif layout is not None and fmt == "sglang" and layer_ids is None:
        layer_ids = list(layout.moe_layers)
    model_placement = loaded
    if layer_ids is not None:
        m = model_placement
        index = {layer: i for i, layer in enumerate(m.layer_ids)}
        absent = [layer for layer in layer_ids if layer not in index]
        if absent:
            raise ValueError(f"{path}: no layer {absent[0]} in the file (has {m.layer_ids})")
        keep = [index[layer] for layer in layer_ids]
        model_placement = ModelPlacement(
            [m.placements[i] for i in keep],
            m.slots_per_gpu,
            list(layer_ids),
            None if m.layer_costs is None else m.layer_costs[keep],
            None if m.lower_bounds is None else m.lower_bounds[keep],
            m.settings,
        )
    return model_placement


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
            ids.append(i)  # vLLM-Ascend reads layers by position, never layer_id
        if num_gpus is not None and num_gpus != devices:
            raise ValueError(f"{path}: the file has {devices} devices, not num_gpus = {num_gpus}")
        return _from_maps(rows, ids, int(devices or 0), num_experts, path)
    raise ValueError(f"unknown placement format {fmt!r}; known: {PLACEMENT_FORMATS}")
