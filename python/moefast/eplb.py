"""A drop-in for DeepSeek's expert-parallelism load balancer (deepseek-ai/EPLB ``eplb.py``).

``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)`` takes and returns
what the reference does: ``phy2log`` [layers, num_replicas], ``log2phy`` [layers, E, X] (-1
padded) and ``logcnt`` [layers, E], as numpy arrays (torch tensors when ``weight`` is one).
The rules are the reference's, transcribed into moefast's Rust core: float32 loads,
replicas to the highest load per replica, heaviest-first packing onto the lightest GPU, and
the hierarchical policy (groups packed onto nodes, then replicas within nodes, then GPUs)
when ``num_groups % num_nodes == 0``. Where the reference's result depends on its torch
build, moefast breaks ties by index (see `moefast._core.rebalance_experts`).

Pass ``tables=`` (one `SubsetTable` per layer) and the same call returns moefast's
co-activation-aware placement in the same three arrays: an engine that calls EPLB switches
in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import moefast._core as _core
from moefast._core import Placement, SubsetTable
from moefast.io.engines import gpu_slots, logical_maps
from moefast.search.methods import optimize


def _tensor_like(arrays: tuple[np.ndarray, ...], like: Any) -> tuple[Any, ...]:
    if hasattr(like, "detach") and hasattr(like, "device"):
        try:
            import torch
        except ImportError:  # pragma: no cover - a tensor without torch cannot exist
            return arrays
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    return arrays


def _as_numpy(weight: Any) -> np.ndarray:
    if hasattr(weight, "detach"):  # torch.Tensor, without importing torch
        weight = weight.detach().cpu().float().numpy()
    array = np.asarray(weight)
    if array.ndim != 2:
        raise ValueError(f"weight must be [layers, num_experts], got shape {array.shape}")
    return array


def rebalance_experts(
    weight: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    tables: Sequence[SubsetTable] | None = None,
    seed: int = 0,
) -> tuple[Any, Any, Any]:
    """(phy2log, log2phy, logcnt) for the loads ``weight`` [layers, E] (token counts).

    Without ``tables``: DeepSeek's EPLB, the same arrays the reference returns (slot p is on
    GPU p // (num_replicas / num_gpus)). With ``tables`` (a `SubsetTable` per layer, built
    from the same routing): moefast's greedy placement of each layer on ``num_gpus`` GPUs of
    ``num_replicas / num_gpus`` slots; ``weight`` then only fixes the shapes, and groups and
    nodes are not used (decode cost depends on GPUs only). Raises ValueError for shapes the
    reference would refuse.
    """
    array = _as_numpy(weight)
    if tables is None:
        phy2log, phyrank, logcnt = _core.rebalance_experts(
            array, num_replicas, num_groups, num_nodes, num_gpus
        )
        layers, experts = logcnt.shape
        log2phy = np.full((layers, experts, int(logcnt.max())), -1, dtype=np.int64)
        for layer in range(layers):
            log2phy[layer, phy2log[layer], phyrank[layer]] = np.arange(phy2log.shape[1])
        return _tensor_like((phy2log, log2phy, logcnt), weight)
    phy2log = _placements_phy2log(array, tables, num_replicas, num_gpus, seed)
    log2phy, logcnt = logical_maps(phy2log, array.shape[1])
    return _tensor_like((phy2log, log2phy, logcnt), weight)


def _placements_phy2log(
    weight: np.ndarray,
    tables: Sequence[SubsetTable],
    num_replicas: int,
    num_gpus: int,
    seed: int,
) -> np.ndarray:

    tables = list(tables)
    if len(tables) != weight.shape[0]:
        raise ValueError(f"tables has {len(tables)} layers, weight {weight.shape[0]}")
    if any(t.num_experts != weight.shape[1] for t in tables):
        raise ValueError(f"every table must have num_experts = {weight.shape[1]}")
    if num_gpus < 1 or num_replicas % num_gpus:
        raise ValueError(
            f"num_replicas = {num_replicas} is not a multiple of num_gpus = {num_gpus}"
        )
    slots = num_replicas // num_gpus
    placements: list[Placement] = [optimize(t, num_gpus, slots, seed=seed) for t in tables]
    return np.stack([gpu_slots(p, slots).ravel() for p in placements])
