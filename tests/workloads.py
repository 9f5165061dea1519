"""Named routing workloads of the tests and benchmarks, all drawn by
`moefast.synthetic.synthetic_topk` (the one generator of synthetic routing)."""

from __future__ import annotations

import moefast as mf
import numpy as np
from moefast.synthetic import synthetic_topk


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
    DESIGN 3 reports for DeepSeek-scale routing."""
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
