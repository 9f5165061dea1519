"""Named routing workloads of the tests and benchmarks, all drawn by
`moefast.io.synthetic.synthetic_topk` (the one generator of synthetic routing)."""

from __future__ import annotations

import moefast as mf
import numpy as np
from moefast.io.synthetic import synthetic_topk, synthetic_trace


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


def weak_topics_v3_topk(num_tokens: int, seed: int = 0) -> np.ndarray:
    """`distinct_v3_topk` with weaker topics: each boosts 8 experts (not 16) by 2 (not 4),
    so co-activation is fainter and the popularity weighs more."""
    return synthetic_topk(num_tokens, 256, 8, seed=seed, num_topics=1024, preferred=8, boost=2.0)


def distinct_v3_model(
    num_layers: int = 58,
    num_tokens: int = 200_000,
    bases: int = 4,
    seed: int = 0,
    draw=distinct_v3_topk,
) -> mf.Trace:
    """A whole model of `draw(num_tokens, seed)` layers (`distinct_v3_topk` by default),
    int16 ids. `bases` layers are drawn (seeds seed..seed+bases-1); layer l relabels the
    experts of base l % bases by its own random permutation, so every layer has its own hot
    experts and groups at the cost of drawing a few."""
    base = [draw(num_tokens, seed=seed + b) for b in range(bases)]
    rng = np.random.default_rng(seed + 1000)
    topk = np.stack(
        [rng.permutation(256)[base[layer % bases]] for layer in range(num_layers)], axis=1
    ).astype(np.int16)
    return mf.Trace(topk, 256)


def loaded_v3_model(
    expert_load: np.ndarray, num_tokens: int = 200_000, bases: int = 4, seed: int = 0
) -> mf.Trace:
    """A whole DeepSeek-V3 model (256 experts, top-8) whose layer l follows the per-expert
    load `expert_load[l]` (e.g. SGLang's published statistics), co-activation drawn around
    it by `synthetic_trace`'s topics. `bases` layers, spread over the model, are drawn with
    their own loads matched; layer l relabels the experts of the nearest base below it so
    that the expert of rank r in the base's load is the expert of rank r in layer l's
    load: every layer has its own hot experts at the share of a drawn layer."""
    load = np.asarray(expert_load, dtype=np.float64)
    num_layers = load.shape[0]
    at = np.linspace(0, num_layers, bases, endpoint=False).astype(int)
    drawn = synthetic_trace(
        num_tokens, 256, 8, bases, seed=seed, expert_load=load[at], match_tolerance=0.01
    ).topk
    layers = []
    for layer in range(num_layers):
        b = int(np.searchsorted(at, layer, side="right")) - 1
        relabel = np.empty(256, dtype=np.int64)
        relabel[np.argsort(-load[at[b]], kind="stable")] = np.argsort(-load[layer], kind="stable")
        layers.append(relabel[drawn[:, b, :]])
    return mf.Trace(np.stack(layers, axis=1).astype(np.int16), 256)


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
