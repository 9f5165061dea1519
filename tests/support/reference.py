"""Plain Python references the fast code is checked against: written for clarity, not speed."""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np


def reference_table(topk, weights=None) -> dict[tuple[int, ...], float]:
    """Subset -> total weight, by a dictionary."""
    table: dict[tuple[int, ...], float] = defaultdict(float)
    for i, row in enumerate(np.asarray(topk).tolist()):
        table[tuple(sorted(row))] += 1.0 if weights is None else float(weights[i])
    return dict(table)


def _can_serve(subset, gpus_of, rounds: int) -> bool:
    """Can every expert of `subset` be given one of its GPUs, no GPU getting more than
    `rounds` experts? Augmenting paths over GPUs copied `rounds` times (Kuhn's algorithm)."""
    owner: dict[tuple[int, int], int] = {}  # (gpu, copy) -> expert

    def find_path(expert: int, seen: set) -> bool:
        for g in gpus_of[expert]:
            for copy in range(rounds):
                slot = (g, copy)
                if slot in seen:
                    continue
                seen.add(slot)
                if slot not in owner or find_path(owner[slot], seen):
                    owner[slot] = expert
                    return True
        return False

    return all(find_path(e, set()) for e in subset)


def reference_cost(subset, replicas) -> int:
    """Fewest rounds of the busiest GPU: the smallest t for which a matching exists."""
    replicas = np.asarray(replicas, dtype=bool)
    gpus_of = {e: list(np.flatnonzero(replicas[e])) for e in subset}
    rounds = 1
    while not _can_serve(subset, gpus_of, rounds):
        rounds += 1
    return rounds


def brute_force_cost(subset, replicas) -> int:
    """Every choice of replica for every expert; the best busiest-GPU count."""
    replicas = np.asarray(replicas, dtype=bool)
    choices = [np.flatnonzero(replicas[e]) for e in subset]
    best = len(subset)
    for pick in itertools.product(*choices):
        best = min(best, max(pick.count(g) for g in set(pick)))
    return best


def reference_expected_cost(table: dict, replicas) -> float:
    total = sum(table.values())
    return sum(w * reference_cost(s, replicas) for s, w in table.items()) / total


def all_full_placements(num_experts: int, num_gpus: int, slots_per_gpu: int):
    """Every placement filling all slots with distinct experts per GPU and holding every
    expert: enough for the optimum, since an extra replica never raises a cost."""
    columns = list(itertools.combinations(range(num_experts), slots_per_gpu))
    # GPUs are interchangeable: non-decreasing column indices suffice.
    for choice in itertools.combinations_with_replacement(range(len(columns)), num_gpus):
        replicas = np.zeros((num_experts, num_gpus), dtype=bool)
        for g, c in enumerate(choice):
            replicas[list(columns[c]), g] = True
        if replicas.any(axis=1).all():
            yield replicas


def expected_cost_ref(subsets, weights, replicas: np.ndarray) -> float:
    gpus_of = [set(np.flatnonzero(row)) for row in replicas]
    total = sum(w * subset_cost_ref(s, gpus_of) for s, w in zip(subsets, weights, strict=True))
    return total / sum(weights)


def subset_cost_ref(subset, gpus_of) -> int:
    """Hall's formula: max over nonempty X of ceil(|X| / |N(X)|)."""
    best = 0
    for size in range(1, len(subset) + 1):
        for xs in itertools.combinations(subset, size):
            neighbours = set().union(*(gpus_of[e] for e in xs))
            best = max(best, -(-size // len(neighbours)))
    return best
