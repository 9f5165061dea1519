"""Skewed, correlated routing for benchmarks: uniform random subsets make placement
nearly trivial (DESIGN 3), real routing is neither uniform nor independent."""

from __future__ import annotations

import numpy as np


def skewed_topk(
    num_tokens: int,
    num_experts: int,
    k: int,
    seed: int = 0,
    num_topics: int = 512,
    noise: float = 0.4,
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


def random_replicated_placement(
    num_experts: int, num_gpus: int, max_replicas: int, seed: int = 0
) -> np.ndarray:
    """bool [E, G]: every expert on 1..max_replicas distinct GPUs."""
    rng = np.random.default_rng(seed)
    replicas = np.zeros((num_experts, num_gpus), dtype=bool)
    for e in range(num_experts):
        count = rng.integers(1, max_replicas + 1)
        replicas[e, rng.choice(num_gpus, size=count, replace=False)] = True
    return replicas


_CHUNK = 65_536


def topic_topk(
    num_tokens: int,
    num_experts: int,
    k: int,
    *,
    num_topics: int | None = None,
    preferred: int | None = None,
    boost: float = 5.0,
    topic_skew: float = 1.1,
    popularity_skew: float = 0.6,
    seed: int = 0,
) -> np.ndarray:
    """Expert ids [num_tokens, k] (int64), each row distinct experts.

    Skewed, correlated synthetic routing traces for the optimizer benchmarks.

    Each token draws a latent topic from a Zipf-like distribution; each topic prefers a
    random set of experts. A token's k experts are the top-k of Gumbel-perturbed logits:
    a global popularity skew plus a boost on its topic's preferred experts. So a few
    subsets are very frequent (as in real decode traces) and experts are co-activated
    in groups that do not follow their ids.
    """
    rng = np.random.default_rng(seed)
    num_topics = num_topics or max(8, num_experts // 2)
    preferred = preferred or min(num_experts, k + k // 2)
    # Global popularity: log-Zipf over a random order of the experts.
    ranks = rng.permutation(num_experts)
    popularity = -popularity_skew * np.log1p(ranks).astype(np.float32)
    topic_logits = np.tile(popularity, (num_topics, 1))
    for t in range(num_topics):
        topic_logits[t, rng.choice(num_experts, size=preferred, replace=False)] += boost
    topic_p = 1.0 / np.arange(1, num_topics + 1) ** topic_skew
    topic_p /= topic_p.sum()
    topics = rng.choice(num_topics, size=num_tokens, p=topic_p)
    out = np.empty((num_tokens, k), dtype=np.int64)
    for start in range(0, num_tokens, _CHUNK):
        stop = min(start + _CHUNK, num_tokens)
        logits = topic_logits[topics[start:stop]]
        logits += rng.gumbel(size=logits.shape).astype(np.float32)
        out[start:stop] = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return out
