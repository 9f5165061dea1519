"""Hypothesis strategies for routing data and placements."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from moefast.io.synthetic import synthetic_topk


@st.composite
def topk_arrays(draw, max_experts: int = 40, max_k: int = 8, max_tokens: int = 60):
    num_experts = draw(st.integers(1, max_experts))
    k = draw(st.integers(1, min(max_k, num_experts)))
    tokens = draw(st.integers(0, max_tokens))
    seed = draw(st.integers(0, 2**32 - 1))
    # A few topics over popular experts make repeated subsets likely, as in real routing.
    num_topics = draw(st.integers(1, 6))
    topk = synthetic_topk(tokens, num_experts, k, seed=seed, num_topics=num_topics)
    return topk.astype(np.int64), num_experts


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


@st.composite
def tiny_batches(draw, max_tokens: int = 4):
    """Batches small enough for brute force: up to `max_tokens` tokens of k <= 2 experts
    over E <= 4 experts, on G <= 3 GPUs with random replica lists."""
    num_experts = draw(st.integers(1, 4))
    num_gpus = draw(st.integers(1, 3))
    lists = [
        sorted(draw(st.sets(st.integers(0, num_gpus - 1), min_size=1, max_size=num_gpus)))
        for _ in range(num_experts)
    ]
    k = draw(st.integers(1, min(2, num_experts)))
    tokens = draw(st.integers(1, max_tokens))
    topk = np.array(
        [draw(st.permutations(range(num_experts)))[:k] for _ in range(tokens)], dtype=np.int64
    )
    return topk, lists, num_gpus
