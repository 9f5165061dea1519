"""Named routing workloads of the tests and benchmarks, all drawn by
`moefast.io.synthetic.synthetic_topk` (the one generator of synthetic routing)."""

from __future__ import annotations

import moefast as mf
import numpy as np
from moefast.io.synthetic import synthetic_topk


def skewed_topk(
    num_tokens: int,
    num_experts: int,
    k: int,
    seed: int = 0,
    num_topics: int = 512,
    noise: float = 0.4,
) -> np.ndarray:
    """int32 [num_tokens, k] of DeepSeek-scale decode routing: Zipf topics that each favour
    2k experts, and a Zipf-like expert popularity. With E=64, k=6 and 1M tokens, ~10^5
    subsets hold 99% of the tokens and the hottest expert carries ~5x the mean load, as
    docs/algorithms.md reports for DeepSeek-scale routing."""
    return synthetic_topk(
        num_tokens,
        num_experts,
        k,
        seed=seed,
        num_topics=num_topics,
        topic_zipf=1.0,
        preferred=2 * k,
        boost=(1.5, 3.5),
        popularity_skew=0.8,
        noise=noise,
    )


def skewed_table(seed: int, num_experts: int, k: int, tokens: int = 200) -> mf.SubsetTable:
    """A small table of tokens from three equally likely topics, each preferring k + 1
    experts, over a Zipf-like popularity: few distinct subsets, some much heavier."""
    topk = synthetic_topk(
        tokens,
        num_experts,
        k,
        seed=seed,
        num_topics=3,
        topic_zipf=0.0,
        preferred=min(num_experts, k + 1),
        boost=3.0,
        popularity_skew=0.7,
    )
    return mf.SubsetTable.from_topk(topk, num_experts=num_experts)


def distinct_v3_topk(num_tokens: int, seed: int = 0) -> np.ndarray:
    """int32 [num_tokens, 8] over 256 experts of DeepSeek-V3-size decode routing where
    nearly every token is a subset of its own: 1,024 Zipf topics that each boost
    16 experts by 4. With 200,000 tokens: 199,291 distinct subsets (99.6%), the hottest
    expert carries 5.5x the mean load, and the greedy is 10% below EPLB (32 GPUs x 9)."""
    return synthetic_topk(num_tokens, 256, 8, seed=seed, num_topics=1024, preferred=16, boost=4.0)


def distinct_v3_model(
    num_layers: int = 58, num_tokens: int = 200_000, bases: int = 4, seed: int = 0
) -> mf.Trace:
    """A whole model of `distinct_v3_topk` layers, int16 ids. `bases` layers are drawn
    (seeds seed..seed+bases-1); layer l relabels the experts of base l % bases by its own
    random permutation, so every layer has its own hot experts and groups at the cost of
    drawing a few."""
    base = [distinct_v3_topk(num_tokens, seed=seed + b) for b in range(bases)]
    rng = np.random.default_rng(seed + 1000)
    topk = np.stack(
        [rng.permutation(256)[base[layer % bases]] for layer in range(num_layers)], axis=1
    ).astype(np.int16)
    return mf.Trace(topk, 256)


def grouped_topk(rng: np.random.Generator, tokens: int, experts: int, groups: int, k: int):
    """Top-k ids over a few top groups per token, skewed (group-limited routing, small)."""
    size = experts // groups
    popularity = rng.gamma(0.7, size=experts)
    rows = []
    for _ in range(tokens):
        top = rng.choice(groups, 2, replace=False)
        pool = np.concatenate([np.arange(g * size, (g + 1) * size) for g in top])
        p = popularity[pool] / popularity[pool].sum()
        rows.append(rng.choice(pool, k, replace=False, p=p))
    return np.array(rows)
