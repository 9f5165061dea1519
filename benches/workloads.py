"""Skewed, correlated routing for benchmarks: uniform random subsets make placement
nearly trivial (DESIGN 3), real routing is neither uniform nor independent."""

from __future__ import annotations

import numpy as np


def skewed_topk(
    num_tokens: int, num_experts: int, k: int, seed: int = 0, num_topics: int = 512, noise: float = 0.4,
    chunk: int = 65_536,
) -> np.ndarray:
    """int32 [num_tokens, k]: each token has a Zipf-distributed topic; a topic favours a
    few experts, and experts have a Zipf-like popularity of their own. With the defaults,
    E=64, k=6 and 1M tokens, ~10^5 subsets hold 99% of the tokens and the hottest expert
    carries ~5x the mean load, as DESIGN 3 reports for DeepSeek-scale routing."""
    rng = np.random.default_rng(seed)
    popularity = -0.8 * np.log(rng.permutation(num_experts) + 1.0)
    topic_logits = np.zeros((num_topics, num_experts))
    for t in range(num_topics):
        favoured = rng.choice(num_experts, size=2 * k, replace=False)
        topic_logits[t, favoured] = rng.uniform(1.5, 3.5, size=2 * k)
    topic_p = 1.0 / np.arange(1, num_topics + 1)
    topic_p /= topic_p.sum()
    out = np.empty((num_tokens, k), dtype=np.int32)
    for start in range(0, num_tokens, chunk):
        n = min(chunk, num_tokens - start)
        topics = rng.choice(num_topics, size=n, p=topic_p)
        logits = popularity + topic_logits[topics] + noise * rng.gumbel(size=(n, num_experts))
        out[start : start + n] = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return out


def random_replicated_placement(num_experts: int, num_gpus: int, max_replicas: int, seed: int = 0) -> np.ndarray:
    """bool [E, G]: every expert on 1..max_replicas distinct GPUs."""
    rng = np.random.default_rng(seed)
    replicas = np.zeros((num_experts, num_gpus), dtype=bool)
    for e in range(num_experts):
        count = rng.integers(1, max_replicas + 1)
        replicas[e, rng.choice(num_gpus, size=count, replace=False)] = True
    return replicas
