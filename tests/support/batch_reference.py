"""Plain-Python references for the batch cost model: exhaustive search over every
replica choice of every token-expert pair, and a numpy step-time simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np


def expert_time(n: int, alpha: float, beta: float, p: float) -> float:
    if n == 0:
        return 0.0
    if p == 1:
        return alpha + beta * n
    if math.isinf(p):
        return max(alpha, beta * n)
    if alpha == 0 or beta == 0:
        return alpha + beta * n
    return (alpha**p + (beta * n) ** p) ** (1 / p)


def layer_time(pair_gpus: dict[tuple[int, int], int], alpha: float, beta: float, p: float) -> float:
    """pair_gpus: (token, expert) -> GPU. A GPU runs each of its experts once."""
    tokens: dict[tuple[int, int], int] = {}
    for (_, e), g in pair_gpus.items():
        tokens[(g, e)] = tokens.get((g, e), 0) + 1
    load: dict[int, float] = {}
    for (g, _), n in tokens.items():
        load[g] = load.get(g, 0.0) + expert_time(n, alpha, beta, p)
    return max(load.values(), default=0.0)


def brute_force_batch_time(
    topk: np.ndarray, lists: list[list[int]], alpha: float, beta: float, p: float
) -> float:
    pairs = [(t, int(e)) for t, row in enumerate(topk) for e in row]
    best = math.inf
    for choice in itertools.product(*(lists[e] for _, e in pairs)):
        best = min(best, layer_time(dict(zip(pairs, choice, strict=True)), alpha, beta, p))
    return 0.0 if not pairs else best


def reference_layer_time(
    topk: np.ndarray, lists: list[list[int]], alpha: float, beta: float, p: float
) -> float:
    """A simple, not optimal, assignment for the speed reference: each expert's tokens
    all go to the least-loaded of its replicas, largest experts first."""
    experts, counts = np.unique(topk, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    load: dict[int, float] = {}
    for i in order:
        e, n = int(experts[i]), int(counts[i])
        g = min(lists[e], key=lambda x: load.get(x, 0.0))
        load[g] = load.get(g, 0.0) + expert_time(n, alpha, beta, p)
    return max(load.values())
