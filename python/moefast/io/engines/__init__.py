"""Placements in the formats inference engines load, and back.

Every engine numbers physical expert slots globally: slot p lives on GPU p // slots_per_gpu.
Writers lay each GPU's experts out in ascending id order and refuse a GPU with a free slot:
engines load exactly slots_per_gpu distinct experts per GPU, and a repeated expert misroutes
tokens (fill free slots first: `ModelPlacement.filled`). Engine files are written with rows for
the right model layers only, so they need the model's layout (`moefast.io.layouts`: ``model=`` a
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

from moefast._core import MAX_GPUS, Placement
from moefast._util.atomic import write_text
from moefast._util.checks import MAX_LAYERS, check_field_int, check_int, check_layer_ids
from moefast.io.layouts import PRESETS, ModelLayout, model_layout
from moefast.io.readers._loading import parse_json
from moefast.placement import ModelPlacement
from moefast.trace import MAX_EXPERTS

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

    ``model`` (a `moefast.io.layouts` preset name or layout), or ``num_layers``/``moe_layers``,
    give the model's layers; engine formats need them (the placement's ``settings["model"]``
    is used when none is given). ``mtp`` adds the model's MTP layers (TensorRT-LLM keys them
    after the main layers, vLLM-Ascend counts them after the MoE layers).
    """
    path = Path(path)
    if not isinstance(placement, ModelPlacement):
        raise TypeError(f"placement must be a ModelPlacement, got {type(placement).__name__}")
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
        write_text(path, text)
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
    try:
        text = json.dumps(data, default=_plain, allow_nan=False)
    except ValueError as err:  # NaN or inf: not JSON, and the engines' parsers refuse it
        raise ValueError(
            f"cannot write {path}: the placement holds a NaN or infinite number (in its"
            f" costs or settings), which JSON cannot represent ({err})"
        ) from None
    write_text(path, text + "\n")
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
    model: str | ModelLayout | None = None,
) -> ModelPlacement:
    """Read a placement written by `save_placement` (or by an engine in the same format).

    ``num_gpus`` is needed for "sglang" and "trtllm", which do not record it; ``num_experts``
    defaults to the largest id seen plus one; ``layer_ids`` keeps only those layers (for
    "sglang", whose rows are all the model's layers, dense ones included). ``model`` (a
    `moefast.io.layouts` preset or layout) names the layers as the engine does: vLLM-Ascend's
    positions become the model's MoE layer ids, and an SGLang file keeps its MoE rows.
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
        loaded = _load(path, data, fmt, num_gpus, num_experts)
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} for the {fmt} format") from err
    except (TypeError, AttributeError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
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
            ids.append(i)  # vLLM-Ascend reads layers by position, never layer_id
        if num_gpus is not None and num_gpus != devices:
            raise ValueError(f"{path}: the file has {devices} devices, not num_gpus = {num_gpus}")
        return _from_maps(rows, ids, devices or 0, num_experts, path)
    raise ValueError(f"unknown placement format {fmt!r}; known: {PLACEMENT_FORMATS}")


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
