"""Plans from per-expert loads alone (SGLang ``logical_count`` and stat dumps, TensorRT-LLM
counts): no token says which experts it chose together, so co-activation cannot be measured
and the best a plan can do is balance load. `plan_from_loads` writes EPLB's placement of the
loads (or the engine's default map, or another baseline, where that is faster on the
profile, or a placement searched for the engine's dispatch) and decides how many redundant
slots to use: each candidate is also scored with fewer slots per GPU, down to none
redundant, under the profile's dispatch (the engine's by default).

Step times are simulated on tokens drawn from the loads, each token's k experts drawn
independently in proportion to the loads (no co-activation): they are labelled so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from moefast._core import Placement, SubsetTable
from moefast.batch.cost_model import CostModel
from moefast.eplb import rebalance_experts
from moefast.evaluate.heldout import baseline_placements
from moefast.evaluate.serving import ServingScores, score_candidates
from moefast.io.engines.slots import placement_from_slots
from moefast.placement import ModelPlacement
from moefast.planning.profile import (
    ServingProfile,
    dispatch_searched,
    engine_default,
    engine_default_label,
    fewer_slots,
)

#: The engine settings that record per-token routing, which co-activation needs.
PER_TOKEN_RECORDING = {
    "sglang": "SGLang: launch with --expert-distribution-recorder-mode per_token (dumps in"
    " SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, one .pt per rank)",
    "trtllm": "TensorRT-LLM: its expert statistic (EXPERT_STATISTIC_PATH=DIR"
    " EXPERT_STATISTIC_ITER_RANGE=FIRST-LAST) writes per-expert counts only in NVIDIA's tree"
    " (commit c85e8726ad9c), so TensorRT-LLM has no setting that records per-token routing;"
    " variants that write rank<r>_raw.safetensors do, else record the model's routing with"
    " moefast.RoutingRecorder or SGLang per_token dumps",
    "vllm-ascend": "vLLM-Ascend: moefast reads no per-token record of it; record the model's"
    " routing with moefast.RoutingRecorder or vLLM's --enable-return-routed-experts"
    " (docs/formats.md)",
}

#: Tokens drawn per layer from the loads to time steps.
DRAWN_TOKENS = 4096


def loads_only_statement(engine: str) -> str:
    """The one line every loads-only plan prints, with the per-token recording settings of
    ``engine`` (the engine that recorded the loads)."""
    how = PER_TOKEN_RECORDING.get(engine, PER_TOKEN_RECORDING["sglang"])
    return (
        "loads only: per-expert counts say nothing about which experts tokens choose together,"
        " so co-activation gains cannot be measured from them; record per-token routing to"
        f" plan for them ({how})"
    )


def draw_tokens(load: np.ndarray, k: int, num_tokens: int, seed: int) -> np.ndarray:
    """``num_tokens`` tokens, each k distinct experts drawn with probability in proportion
    to ``load`` (Gumbel top-k: sampling without replacement), int [tokens, k]."""
    load = np.asarray(load, dtype=np.float64)
    if np.count_nonzero(load) < k:
        raise ValueError(f"fewer than k = {k} experts have load: cannot draw tokens of k experts")
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore"):
        logp = np.log(load / load.sum())
    keys = logp[None, :] + rng.gumbel(size=(num_tokens, load.size))
    return np.argsort(-keys, axis=1)[:, :k].astype(np.int64)


@dataclass(frozen=True)
class LoadsPlan:
    """The recommended placement and every candidate's scores."""

    model: ModelPlacement
    scores: ServingScores
    slots_per_gpu: int
    redundant: int
    note: str


def _eplb(
    loads: np.ndarray, num_gpus: int, slots_per_gpu: int
) -> tuple[list[Placement], np.ndarray]:
    """EPLB's placements of the loads and its slot map (phy2log, repeats included)."""
    phy2log, _, _ = rebalance_experts(loads, num_gpus * slots_per_gpu, 1, 1, num_gpus)
    num_experts = loads.shape[1]
    placed = [
        placement_from_slots(np.asarray(row), num_gpus, num_experts, "EPLB") for row in phy2log
    ]
    return placed, np.asarray(phy2log)


def plan_from_loads(
    loads: np.ndarray,
    layer_ids: Sequence[int],
    num_gpus: int,
    slots_per_gpu: int,
    k: int,
    profile: ServingProfile,
    cost_model: CostModel,
    *,
    seed: int = 0,
    num_tokens: int = DRAWN_TOKENS,
) -> LoadsPlan:
    """The candidate of least expected step time over ``profile`` among EPLB of the loads,
    round-robin, contiguous and the engine's default map, each with ``slots_per_gpu``
    slots per GPU and with every smaller count that still holds every expert (fewer
    redundant experts, down to none), and under an engine's dispatch the placement searched
    for it from them (`moefast.planning.profile.dispatch_searched`): scored on tokens drawn
    from the loads (`draw_tokens`) under ``profile``'s dispatch."""
    loads = np.asarray(loads, dtype=np.float64)
    if loads.ndim != 2 or loads.shape[0] != len(layer_ids):
        raise ValueError("loads must be [layers, experts] with one row per layer id")
    num_experts = loads.shape[1]
    tables = [
        SubsetTable.from_topk(draw_tokens(row, k, num_tokens, seed + i), num_experts)
        for i, row in enumerate(loads)
    ]
    if math.ceil(num_experts / num_gpus) > slots_per_gpu:
        raise ValueError(
            f"{num_gpus} GPUs x {slots_per_gpu} slots cannot hold {num_experts} experts"
        )
    default_name = engine_default_label(profile.engine)
    candidates: dict[str, list[Placement]] = {}
    shapes: dict[str, int] = {}
    slot_maps: dict[str, np.ndarray] = {}
    counts, why = fewer_slots(num_experts, num_gpus, slots_per_gpu)
    for slots in [slots_per_gpu, *counts]:
        redundant = num_gpus * slots - num_experts
        suffix = f", {redundant} redundant"
        eplb_placed, slot_maps["EPLB" + suffix] = _eplb(loads, num_gpus, slots)
        placed: dict[str, list[Placement]] = {"EPLB": eplb_placed}
        base = baseline_placements(tables, num_gpus, slots, ("round_robin", "contiguous"), seed)
        placed["round-robin"], placed["contiguous"] = base["round_robin"], base["contiguous"]
        placed[default_name] = [engine_default(num_experts, num_gpus, slots)] * len(tables)
        if profile.rule != "best":
            label, searched = dispatch_searched(tables, placed, profile, cost_model, seed)
            placed[label] = searched
        for name, placements in placed.items():
            candidates[name + suffix] = placements
            shapes[name + suffix] = slots
    note = (
        f"synthetic tokens: {num_tokens} per layer drawn from the loads, each token's"
        f" {k} experts independent (no co-activation)"
    )
    scores = score_candidates(
        tables,
        tables,
        candidates,
        profile.batch_sizes,
        profile.weights or (),
        cost_model,
        basis="in-sample",
        note=note,
        cost_model_note=repr(cost_model),
        seed=seed,
        steps=profile.steps,
        dispatch=profile.rule,
        redundant={name: num_gpus * s - num_experts for name, s in shapes.items()},
        compare_best=profile.compare_best,
    )
    if why:
        scores = replace(scores, redundancy_note=why)
    best = scores.recommended
    slots = shapes[best]
    settings: dict[str, Any] = {
        "method": "loads only",
        "num_gpus": num_gpus,
        "cost_basis": "in-sample",
        "cost_note": note,
        "serving": scores.as_settings(),
        "redundant_experts": num_gpus * slots - num_experts,
    }
    model = ModelPlacement(
        placements=candidates[best],
        slots_per_gpu=slots,
        layer_ids=list(layer_ids),
        layer_costs=scores.rounds[best],
        settings=settings,
        slots=slot_maps.get(best),
    )
    return LoadsPlan(model, scores, slots, num_gpus * slots - num_experts, note)
