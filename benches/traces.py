"""Skewed, correlated synthetic routing traces for the optimizer benchmarks.

Each token draws a latent topic from a Zipf-like distribution; each topic prefers a
random set of experts. A token's k experts are the top-k of Gumbel-perturbed logits:
a global popularity skew plus a boost on its topic's preferred experts. So a few
subsets are very frequent (as in real decode traces) and experts are co-activated
in groups that do not follow their ids.
"""

from __future__ import annotations

import numpy as np

CHUNK = 65_536


def skewed_topk(
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
    """Expert ids [num_tokens, k] (int64), each row distinct experts."""
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
    for start in range(0, num_tokens, CHUNK):
        stop = min(start + CHUNK, num_tokens)
        logits = topic_logits[topics[start:stop]]
        logits += rng.gumbel(size=logits.shape).astype(np.float32)
        out[start:stop] = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return out
