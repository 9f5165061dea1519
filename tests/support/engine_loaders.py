"""Plain transcriptions of how each engine loads a placement file, written from the engines'
own loaders, to check moefast's exported files against (not moefast's reader).

Each function returns, per layer the engine asks for, the experts each rank holds in slot
order, and raises AssertionError where the engine would fail or misroute tokens.

- SGLang (sgl-project/sglang python/sglang/srt/eplb/expert_location.py,
  compute_initial_expert_location_metadata / init_by_mapping / _init_common): a path ending
  in .json is read as JSON (any other string is parsed as JSON text), every key of the file
  is passed to init_by_mapping (so only physical_to_logical_map may be there),
  P = E + ep_num_redundant_experts must divide by ep_size, rows are the model's decoder
  layers (num_hidden_layers, from get_model_config_for_expert_location), slot p is on rank
  p // (P / ep_size); DeepSeek's NextN draft layer is decoder layer 0 (deepseek_nextn.py).
- TensorRT-LLM (NVIDIA/TensorRT-LLM tensorrt_llm/llmapi/llm_args.py MoeLoadBalancerConfig, a
  strict pydantic model, commit fcd3f31; examples/wide_ep/ep_load_balancer/
  generate_eplb_config.py writes it): keys num_slots, initial_global_assignments,
  layer_updates_per_iter only; num_slots divides by ep_size;
  get_layer_initial_global_assignments raises KeyError for a missing layer (an MTP layer
  under speculative decoding included) and ValueError when a list is not num_slots long;
  a list may repeat an expert; rank r holds slots [r n, (r + 1) n).
- vLLM-Ascend (vllm-project/vllm-ascend vllm_ascend/ops/expert_load_balancer.py): reads
  moe_layer_count and layer_list[i]["device_list"][g]["device_expert"] by MoE-layer position i
  (layer_id is never read), device_count of layer 0 is the rank count, the lists form one
  rectangular tensor; the rank's placement map is expert -> local slot (a repeated expert
  keeps only its last slot), its local expert count is the number of distinct experts, and
  the redundant count is slots * ranks - E. Its launch settings (vllm_ascend/ascend_config.py,
  commit 001cd9e: AscendConfig and EplbConfig, pydantic with extra="forbid"): see
  `ascend_eplb_config`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml


def sglang_load(
    path: Path,
    *,
    ep_size: int,
    num_experts: int,
    num_redundant: int,
    num_hidden_layers: int,
) -> list[list[list[int]]]:
    """Experts of each rank, slot by slot, for every decoder layer [layer][rank][slot]."""
    text = str(path)
    assert text.endswith(".json") or text.endswith(".pt"), "SGLang parses this path as JSON"
    data = json.loads(Path(path).read_text())
    assert set(data) == {"physical_to_logical_map"}, f"init_by_mapping gets keys {set(data)}"
    p2l = np.asarray(data["physical_to_logical_map"])
    num_physical = num_experts + num_redundant
    assert num_physical % ep_size == 0
    assert p2l.shape == (num_hidden_layers, num_physical), p2l.shape
    local = num_physical // ep_size
    layers = []
    for row in p2l:
        # _compute_logical_to_all_physical_map: every expert needs a physical slot.
        assert set(row.tolist()) == set(range(num_experts))
        layers.append([row[r * local : (r + 1) * local].tolist() for r in range(ep_size)])
    return layers


def trtllm_load(
    path: Path, *, ep_size: int, layer_indices: list[int], num_experts: int
) -> dict[int, list[list[int]]]:
    """Experts of each rank for every decoder layer index the model asks for."""
    data = yaml.safe_load(Path(path).read_text())
    assert set(data) <= {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
    num_slots = data["num_slots"]
    assert num_slots % ep_size == 0 and num_slots >= num_experts
    assignments = data["initial_global_assignments"]
    local = num_slots // ep_size
    out = {}
    for layer in layer_indices:
        assert layer in assignments, f"KeyError: layer_idx {layer} not found"
        slots = assignments[layer]
        assert len(slots) == num_slots
        assert set(slots) == set(range(num_experts))
        out[layer] = [slots[r * local : (r + 1) * local] for r in range(ep_size)]
    return out


def vllm_ascend_load(
    path: Path, *, num_moe_layers: int, num_experts: int, ep_size: int
) -> list[list[list[int]]]:
    """Experts of each rank for MoE-layer positions 0..num_moe_layers-1, after checking that
    every (rank, expert) pair routes to a slot holding that expert."""
    assert str(path).endswith(".json")
    data = json.loads(Path(path).read_text())
    layers_num = data["moe_layer_count"]
    ranks = data["layer_list"][0]["device_count"]
    assert ranks == ep_size
    tensor = np.array(
        [[d["device_expert"] for d in layer["device_list"]] for layer in data["layer_list"]]
    )
    assert tensor.ndim == 3, "device lists must be rectangular"
    slots = tensor.shape[2]
    redundant = slots * ranks - num_experts
    assert redundant >= 0
    out = []
    for position in range(num_moe_layers):
        assert position < layers_num, f"IndexError: MoE layer {position} of {layers_num}"
        per_rank = []
        for rank in range(ranks):
            e_ids = tensor[position, rank]
            placement_map = np.full(num_experts, -1)
            placement_map[e_ids] = np.arange(len(e_ids))  # a repeat keeps the last slot
            local_num = int((placement_map != -1).sum())
            assert local_num == slots, f"rank {rank} has {local_num} local experts for {slots}"
            for e in range(num_experts):
                if placement_map[e] != -1:
                    assert e_ids[placement_map[e]] == e
            per_rank.append(e_ids.tolist())
        out.append(per_rank)
    return out


def deepseek_eplb_check(path: Path, num_experts: int) -> np.ndarray:
    """phy2log after checking logcnt and log2phy the way DeepSeek's EPLB builds them."""
    data = json.loads(Path(path).read_text())
    phy2log, log2phy, logcnt = (np.asarray(data[k]) for k in ("phy2log", "log2phy", "logcnt"))
    layers, slots = phy2log.shape
    assert logcnt.shape == (layers, num_experts) and (logcnt.sum(axis=1) == slots).all()
    assert log2phy.shape == (layers, num_experts, logcnt.max())
    for layer in range(layers):
        rebuilt = np.full_like(log2phy[layer], -1)
        for e in range(num_experts):
            rank = 0
            for p in range(slots):
                if phy2log[layer, p] == e:
                    rebuilt[e, rank] = p
                    rank += 1
            assert rank == logcnt[layer, e]
        assert np.array_equal(
            np.sort(np.where(rebuilt < 0, 1 << 30, rebuilt), axis=1),
            np.sort(np.where(log2phy[layer] < 0, 1 << 30, log2phy[layer]), axis=1),
        )
    return phy2log


#: EplbConfig's keys at vllm-ascend commit 001cd9e, with their defaults.
ASCEND_EPLB_DEFAULTS = {
    "dynamic_eplb": False,
    "expert_map_path": None,
    "expert_heat_collection_interval": 600,
    "algorithm_execution_interval": 50,
    "expert_map_record_path": None,
    "num_redundant_experts": 0,
    "eplb_policy_type": 2,
    "eplb_heat_collection_stage": "all",
    "load_collection_phase": "all",
}


def ascend_eplb_config(additional_config: dict, known_top_level: set[str]) -> dict:
    """The eplb_config AscendConfig builds from ``additional_config`` (the JSON of
    --additional-config): unknown top-level keys are refused (extra="forbid"; the caller
    names the keys it lets through, eplb_config among them), as are unknown eplb_config keys;
    expert_map_path must end in .json and be a readable file; num_redundant_experts an int
    >= 0. Returns every EplbConfig field."""
    unknown = set(additional_config) - known_top_level - {"eplb_config"}
    assert not unknown, f"AscendConfig: extra keys {sorted(unknown)} are not permitted"
    given = additional_config.get("eplb_config", {})
    assert isinstance(given, dict)
    extra = set(given) - set(ASCEND_EPLB_DEFAULTS)
    assert not extra, f"EplbConfig: extra keys {sorted(extra)} are not permitted"
    config = {**ASCEND_EPLB_DEFAULTS, **given}
    path = config["expert_map_path"]
    if path is not None:
        assert path[-5:] == ".json", "TypeError: The expert_map is not json."
        assert Path(path).is_file(), "ValueError: The expert_map is not exist."
    redundant = config["num_redundant_experts"]
    assert isinstance(redundant, int) and not isinstance(redundant, bool) and redundant >= 0
    return config
