"""A small re-implementation of DeepSeek's EPLB (DESIGN 3), the baseline of the batch
benchmarks until the library's own `optimize(method="eplb")` lands: replicate the
expert with the highest load per replica until every slot is used, then pack replicas
heaviest first onto the lightest GPU with a free slot that lacks that expert."""

from __future__ import annotations

import numpy as np

import moefast as mf


def eplb_placement(expert_load: np.ndarray, num_gpus: int, slots_per_gpu: int) -> mf.Placement:
    load = np.asarray(expert_load, dtype=np.float64)
    num_experts = len(load)
    if num_gpus * slots_per_gpu < num_experts:
        raise ValueError("fewer slots than experts")
    replicas = np.ones(num_experts, dtype=np.int64)
    for _ in range(num_gpus * slots_per_gpu - num_experts):
        share = np.where(replicas < num_gpus, load / replicas, -np.inf)
        replicas[int(np.argmax(share))] += 1
    items = sorted(((load[e] / replicas[e], e) for e in range(num_experts) for _ in range(replicas[e])), key=lambda x: -x[0])
    gpu_load = np.zeros(num_gpus)
    used = np.zeros(num_gpus, dtype=np.int64)
    lists: list[list[int]] = [[] for _ in range(num_experts)]
    for share, e in items:
        free = [g for g in range(num_gpus) if used[g] < slots_per_gpu and g not in lists[e]]
        if not free:
            raise ValueError(f"no GPU with a free slot lacks expert {e}")
        g = min(free, key=lambda x: (gpu_load[x], x))
        lists[e].append(g)
        gpu_load[g] += share
        used[g] += 1
    return mf.Placement.from_lists(lists, num_gpus)
