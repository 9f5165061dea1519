"""Which replica an engine sends each (token, expert) pair to: the engines' dispatch rules,
transcribed from their code (docs/cost-model.md#dispatch), as static maps int
[ranks, experts] (the GPU serving each expert for the tokens of each source rank) that the
core's `dispatch_costs` and `simulate_dispatch_steps` take.

- ``"best"``: the replicas that make the busiest GPU least busy (the cost model's own
  choice; no map).
- ``"sglang-static"``: SGLang's ``--ep-dispatch-algorithm static``
  (``compute_logical_to_rank_dispatch_physical_map`` in
  ``python/sglang/srt/eplb/expert_location.py``, sgl-project/sglang commit 6270b01): for each
  layer in order, each expert in order, each source rank keeps the first replica on its own
  GPU; the ranks without one get ``_fair_choices`` of the expert's replicas (every replica
  ``count // len`` times plus ``random.sample`` of the rest, then ``random.shuffle``), one
  ``random.Random(42)`` running through all layers. Newer SGLang versions first prefer a
  replica on the same node when that narrows the candidates (``gpus_per_node``).
- ``"sglang-dynamic"``: SGLang's ``dynamic`` (and ``fake``): a uniform draw among the
  expert's replicas for every pair (``expert_location_dispatch.py``: ``randint(0, 65536) %
  count``); no map.
- ``"trtllm"``: TensorRT-LLM's load balancer (``moeComputeRouteKernel`` in
  ``cpp/tensorrt_llm/kernels/moeLoadBalance/moeLoadBalanceKernels.cu``, NVIDIA/TensorRT-LLM
  commit ada8389): a rank's pairs, flattened in token then column order, go in blocks of
  1,024; the j-th pair of an expert in block b goes to replica ``(j + b + rank) % count``
  in slot order, so a lone token on rank r uses replica ``r % count`` (its map here, the
  first pairs'); the core's simulation follows the round robin at every batch size.
- ``"vllm-ascend"``: vLLM-Ascend's ``log2phy`` map (``generate_log2phy_map`` in
  ``vllm_ascend/eplb/core/eplb_utils.py``, vllm-project/vllm-ascend commit 182b75e, one
  EP rank per device): every token of rank r sends an expert to its replica ``r % count``,
  replicas in rank order, at every batch size. Older versions (695bb39) kept a rank's own
  replica and drew the others at random, SGLang's static rule with independent draws.

Physical slots are numbered GPU by GPU with each GPU's experts ascending (the order
`moefast.io.engines.slots.gpu_slots` writes), so an expert's replicas in physical order
are its GPUs ascending.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from moefast._core import Placement

#: Dispatch rules that costs and simulations take.
DISPATCHES = ("best", "sglang-static", "sglang-dynamic", "trtllm", "vllm-ascend")

#: The dispatch each engine format runs by default (other formats: "best").
ENGINE_DISPATCH = {"sglang": "sglang-static", "trtllm": "trtllm", "vllm-ascend": "vllm-ascend"}

#: The words every figure computed under a dispatch carries.
DISPATCH_LABELS = {
    "best": "best replica choice",
    "sglang-static": "SGLang static dispatch",
    "sglang-dynamic": "SGLang dynamic dispatch",
    "trtllm": "TensorRT-LLM dispatch",
    "vllm-ascend": "vLLM-Ascend dispatch",
}

#: The seed SGLang's static map draws with.
SGLANG_SEED = 42


def check_dispatch(dispatch: object) -> str:
    """The dispatch name, or ValueError naming the known ones."""
    if dispatch not in DISPATCHES:
        raise ValueError(f"unknown dispatch {dispatch!r}; known: {', '.join(DISPATCHES)}")
    return str(dispatch)


def engine_dispatch(engine: str) -> str:
    """The dispatch ``engine`` (a placement format) runs by default: "best" for formats
    that are no engine's (eplb, native)."""
    return ENGINE_DISPATCH.get(engine, "best")


def dispatch_label(dispatch: str) -> str:
    """The words naming ``dispatch`` in a figure."""
    return DISPATCH_LABELS[check_dispatch(dispatch)]


def _fair_choices(candidates: list[int], count: int, rng: random.Random) -> list[int]:
    whole, rest = divmod(count, len(candidates))
    chosen = candidates * whole + rng.sample(candidates, k=rest)
    rng.shuffle(chosen)
    return chosen


def sglang_static_maps(
    placements: Sequence[Placement],
    *,
    seed: int = SGLANG_SEED,
    gpus_per_node: int | None = None,
    slots: np.ndarray | None = None,
) -> list[np.ndarray]:
    """int [G, E] per layer: SGLang's static dispatch map of each source rank, for the
    layers of one engine file in its row order (the draws run through all layers, so a
    layer's map depends on the layers before it). ``gpus_per_node``: the newer rule, which
    takes a lone replica without drawing and prefers a replica on the rank's node when only
    some replicas are there. ``slots``: the file's physical-to-logical map int [layers, P],
    whose repeats (an expert twice on one GPU) the engine's candidate lists keep, so that
    such a GPU is drawn for twice as many ranks; without it, one slot per replica."""
    rng = random.Random(seed)
    maps = []
    for layer, placement in enumerate(placements):
        num_gpus = placement.num_gpus
        out = np.full((num_gpus, placement.num_experts), -1, dtype=np.int64)
        for e, candidates in enumerate(_candidates(placement, layer, slots)):
            remaining = []
            for rank in range(num_gpus):
                nearest = _nearest(candidates, rank, gpus_per_node)
                if nearest is None:
                    remaining.append(rank)
                else:
                    out[rank, e] = nearest
            if remaining:
                for rank, g in zip(
                    remaining, _fair_choices(candidates, len(remaining), rng), strict=True
                ):
                    out[rank, e] = g
        maps.append(out)
    return maps


def _candidates(placement: Placement, layer: int, slots: np.ndarray | None) -> list[list[int]]:
    """Per expert, the GPU of each of its physical slots in physical order: from the map
    ``slots[layer]`` (repeats kept), else one per replica, GPUs ascending."""
    if slots is None:
        return [[int(g) for g in np.nonzero(row)[0]] for row in placement.replicas]
    row = np.asarray(slots[layer])
    per_gpu = row.size // placement.num_gpus
    return [
        [int(p) // per_gpu for p in np.nonzero(row == e)[0]] for e in range(placement.num_experts)
    ]


def _nearest(candidates: list[int], rank: int, gpus_per_node: int | None) -> int | None:
    # The rule of commit 6270b01 draws even for a lone replica (the shuffle of identical
    # choices still advances the generator); the newer rule takes it directly.
    if gpus_per_node is not None and len(candidates) == 1:
        return candidates[0]
    if rank in candidates:
        return rank
    if gpus_per_node is not None:
        node = [g for g in candidates if g // gpus_per_node == rank // gpus_per_node]
        if 0 < len(node) < len(candidates):
            return node[0]
    return None


def trtllm_map(placement: Placement, layer: int = 0, slots: np.ndarray | None = None) -> np.ndarray:
    """int [G, E]: the replica TensorRT-LLM's load balancer gives a lone token of each rank,
    and vLLM-Ascend's ``log2phy`` map every token of the rank (replica ``rank % count`` in
    slot order; with ``slots``, the file's map, over its slots, repeats included)."""
    out = np.empty((placement.num_gpus, placement.num_experts), dtype=np.int64)
    for e, candidates in enumerate(_candidates(placement, layer, slots)):
        gpus = np.asarray(candidates)
        out[:, e] = gpus[np.arange(placement.num_gpus) % gpus.size]
    return out


def dispatch_maps(
    placements: Sequence[Placement], dispatch: str, slots: np.ndarray | None = None
) -> list[np.ndarray | None]:
    """The static map of each layer under ``dispatch`` (None: a uniform draw per pair);
    ``slots``: the file's physical-to-logical map [layers, P], whose repeated slots the
    static rules count. Raises ValueError for ``"best"``, which has no map."""
    dispatch = check_dispatch(dispatch)
    if dispatch == "sglang-static":
        return list(sglang_static_maps(placements, slots=slots))
    if dispatch in ("trtllm", "vllm-ascend"):
        return [trtllm_map(p, i, slots) for i, p in enumerate(placements)]
    if dispatch == "sglang-dynamic":
        return [None] * len(placements)
    raise ValueError("the best dispatch has no map: use the core's costs directly")
