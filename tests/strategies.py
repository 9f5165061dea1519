"""Hypothesis strategies for routing data and placements."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def topk_arrays(draw, max_experts: int = 40, max_k: int = 8, max_tokens: int = 60):
    num_experts = draw(st.integers(1, max_experts))
    k = draw(st.integers(1, min(max_k, num_experts)))
    tokens = draw(st.integers(0, max_tokens))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # A few popular experts make repeated subsets likely, as in real routing.
    hot = max(k, num_experts // 4)
    rows = [
        rng.choice(hot if rng.random() < 0.7 else num_experts, size=k, replace=False)
        for _ in range(tokens)
    ]
    topk = np.array(rows, dtype=np.int64).reshape(tokens, k)
    return topk, num_experts


@st.composite
def placements(draw, num_experts: int, max_gpus: int = 12, max_replicas: int = 3):
    num_gpus = draw(st.integers(1, max_gpus))
    seed = draw(st.integers(0, 2**32 - 1))
    return random_replicas(np.random.default_rng(seed), num_experts, num_gpus, max_replicas)


def random_replicas(rng, num_experts: int, num_gpus: int, max_replicas: int) -> np.ndarray:
    replicas = np.zeros((num_experts, num_gpus), dtype=bool)
    for e in range(num_experts):
        count = rng.integers(1, min(max_replicas, num_gpus) + 1)
        replicas[e, rng.choice(num_gpus, size=count, replace=False)] = True
    return replicas
