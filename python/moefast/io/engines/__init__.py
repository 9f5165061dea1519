"""Placements in the formats inference engines load, and back.

Every engine numbers physical expert slots globally: slot p lives on GPU p // slots_per_gpu.
A placement with a slot map (`ModelPlacement.slots`: read from an engine file or made by
EPLB) is written slot for slot, repeats included; others get each GPU's experts in ascending
id order, and a GPU with a free slot is refused (fill free slots first:
`ModelPlacement.filled`). vLLM-Ascend misroutes an expert repeated on one device, so its
writer refuses one. Engine files are written with rows for
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moefast._core import MAX_GPUS
from moefast._util.atomic import write_text
from moefast._util.checks import check_int, check_layer_ids
from moefast.io.engines import eplb, native, sglang, trtllm, vllm_ascend
from moefast.io.engines.eplb import logical_maps
from moefast.io.engines.native import NATIVE_TAG
from moefast.io.engines.slots import (
    default_map,
    engine_rows,
    gpu_slots,
    physical_to_logical,
    placement_from_slots,
)
from moefast.io.layouts import PRESETS, ModelLayout, model_layout
from moefast.io.readers._loading import parse_json
from moefast.placement import ENGINE_FILES, ModelPlacement
from moefast.trace import MAX_EXPERTS

PLACEMENT_FORMATS = ("json", "sglang", "eplb", "trtllm", "vllm-ascend")

__all__ = [
    "PLACEMENT_FORMATS",
    "check_file_name",
    "default_map",
    "engine_rows",
    "gpu_slots",
    "launch_settings",
    "load_placement",
    "logical_maps",
    "physical_to_logical",
    "placement_from_slots",
    "save_placement",
]

#: Each format's reader: (path, data, num_gpus, num_experts) -> ModelPlacement.
_READERS = {
    "json": native.read,
    "sglang": sglang.read,
    "eplb": eplb.read,
    "trtllm": trtllm.read,
    "vllm-ascend": vllm_ascend.read,
}


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
        # AscendConfig reads the map and the redundant count from additional_config's
        # eplb_config only, and refuses unknown top-level keys (docs/formats.md).
        eplb_config = {"expert_map_path": str(path), "num_redundant_experts": redundant}
        additional = json.dumps({"eplb_config": eplb_config})
        return {
            "engine": "vLLM-Ascend",
            "command_line": (
                f"--enable-expert-parallel (EP size {g}) --additional-config '{additional}'"
            ),
            "additional_config": {"eplb_config": eplb_config},
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
    mtp: bool | None = None,
) -> dict[str, Any]:
    """Write ``placement`` to ``path`` in ``format`` (one of `PLACEMENT_FORMATS`) and return the
    engine settings the file needs (`launch_settings`).

    ``model`` (a `moefast.io.layouts` preset name or layout), or ``num_layers``/``moe_layers``,
    give the model's layers; engine formats need them (the placement's ``settings["model"]``
    is used when none is given). ``mtp`` adds the model's MTP layers (TensorRT-LLM keys them
    after the main layers, vLLM-Ascend counts them after the MoE layers); the placement's own
    MTP layers are always written, and by default (None) a TensorRT-LLM file has rows for the
    model's MTP layers (the engine looks them up under speculative decoding), with the default
    map where the placement has none. A placement with a slot map (`ModelPlacement.slots`) is
    written slot for slot; vLLM-Ascend refuses one with a repeated expert on a GPU.
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
            trtllm.write(placement, layout, mtp), sort_keys=False, default_flow_style=None
        )
        write_text(path, text)
        return launch_settings(
            format, path, placement.num_gpus, placement.slots_per_gpu, placement.num_experts
        )
    if format == "json":
        if layout is not None:
            layout.check_layers(placement.layer_ids, placement.num_experts)
        data = native.write(placement)
    elif format == "sglang":
        assert layout is not None
        data = sglang.write(placement, layout)
    elif format == "eplb":
        data = eplb.write(placement, layout)
    else:
        assert layout is not None
        data = vllm_ascend.write(placement, layout, bool(mtp))
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
        if data.get("format") == NATIVE_TAG:
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
        loaded = _READERS[fmt](path, data, num_gpus, num_experts)
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
        loaded = ModelPlacement(
            loaded.placements, loaded.slots_per_gpu, ids[: len(loaded)], slots=loaded.slots
        )
    elif layout is not None and fmt == "sglang" and layer_ids is None:
        layer_ids = list(layout.moe_layers)
        loaded = sglang.with_mtp_row(loaded, layout)
        layer_ids += [x for x in layout.mtp_layers if x in loaded.layer_ids]
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
            slots=None if m.slots is None else m.slots[keep],
        )
    return model_placement


ENGINE_FILES.update(save=save_placement, load=load_placement)
