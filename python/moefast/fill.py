"""Filling free GPU slots: an extra replica never raises a subset's cost, so every
placement moefast returns uses all the memory it is given."""

from __future__ import annotations

import numpy as np

from moefast._core import Placement


def fill_free_slots(replicas: np.ndarray, slots_per_gpu: int, expert_load: np.ndarray) -> Placement:
    """Adds replicas to GPUs with free slots, most loaded experts (per replica) first,
    never two replicas of one expert on a GPU."""
    replicas = np.array(replicas, dtype=bool)
    load = np.asarray(expert_load, dtype=np.float64)
    for g in range(replicas.shape[1]):
        while replicas[:, g].sum() < slots_per_gpu:
            per_replica = np.where(replicas[:, g], -np.inf, load / replicas.sum(axis=1))
            replicas[int(np.argmax(per_replica)), g] = True
    return Placement(replicas)
