"""Realistic synthetic routing traces: skewed expert popularity and co-activation.

Uniformly random subsets make placement nearly trivial, so tests and benchmarks need traces
whose experts are used unevenly and chosen together in groups, as real routers do.
"""

from __future__ import annotations

import numpy as np

from moefast.progress import progress
from moefast.trace import MAX_EXPERTS, Trace
from moefast.validation import (
    check_count,
    check_int,
    check_non_negative,
    check_positive,
    check_seed,
)


def _target_share(
    expert_load: np.ndarray | None, num_layers: int, num_experts: int, k: int
) -> np.ndarray | None:
    """Per layer, the fraction of tokens that should pick each expert, float [L, E]."""
    if expert_load is None:
        return None
    load = np.asarray(expert_load, dtype=np.float64)
    if load.ndim == 1:
        load = np.broadcast_to(load, (num_layers, load.size))
    if load.shape != (num_layers, num_experts):
        raise ValueError(
            f"expert_load must be [E] = [{num_experts}] or"
            f" [layers, E] = [{num_layers}, {num_experts}], got shape {np.shape(expert_load)}"
        )
    if not np.all(np.isfinite(load)) or (load < 0).any():
        raise ValueError("expert_load must be finite and non-negative")
    totals = load.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError(
            f"expert_load has a layer with zero total load (layer {int(np.argmin(totals))})"
        )
    used = (load > 0).sum(axis=1)
    if (used < k).any():
        raise ValueError(f"expert_load gives fewer than k = {k} experts a load in some layer")
    share = k * load / totals
    if (share > 1 + 1e-9).any():
        e = np.unravel_index(np.argmax(share), share.shape)
        raise ValueError(
            f"expert_load asks expert {e[1]} (layer {e[0]}) to serve {share[e]:.2f} of the tokens:"
            f" with k = {k} no expert can take more than 1/k = {1 / k:.3f} of the load"
        )
    return share


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-logits, k - 1, axis=1)[:, :k]


def _match_share(
    scores: np.ndarray, share: np.ndarray, k: int, iterations: int, tolerance: float
) -> np.ndarray:
    """A per-expert bias so that top-k of ``scores + bias`` picks each expert ``share`` of the time.

    The noise in ``scores`` stays fixed while the bias moves, so the frequencies reached here
    are exactly those of the trace generated from it.
    """
    n, e = scores.shape
    bias = np.where(share > 0, 0.0, -np.inf)
    eps = 0.5 / n
    for _ in range(iterations):
        counts = np.bincount(_top_k(scores + bias.astype(np.float32), k).ravel(), minlength=e) / n
        error = np.abs(counts - share).sum() / k
        if error < tolerance:
            break
        # A log-ratio step moves popular and rare experts at the same relative speed.
        step = np.log(share + eps) - np.log(counts + eps)
        bias = np.where(share > 0, bias + 0.8 * step, -np.inf)
    return bias


def synthetic_trace(
    num_tokens: int,
    num_experts: int,
    k: int,
    num_layers: int,
    seed: int = 0,
    expert_load: np.ndarray | None = None,
    *,
    num_topics: int | None = None,
    topic_zipf: float = 1.1,
    topic_strength: float = 3.0,
    popularity_skew: float = 0.5,
    noise: float = 1.0,
    match_iterations: int = 100,
    match_tolerance: float = 0.005,
    layer_ids: list[int] | None = None,
) -> Trace:
    """A routing trace with skewed, correlated expert choices.

    Model: every token has a latent topic drawn from a Zipf law over ``num_topics`` topics
    (weight of topic t proportional to 1/(t+1)^``topic_zipf``); the same topic holds in every
    layer, as a token's meaning does. In each layer, expert e's logit for a token is

        popularity[e] + topic_logits[topic, e] + noise * Gumbel

    and the token picks the k largest (Gumbel top-k: sampling k experts without replacement
    with probabilities softmax((popularity + topic_logits) / noise)). Each layer draws its own
    ``popularity`` ~ N(0, ``popularity_skew``^2) and ``topic_logits`` ~
    N(0, ``topic_strength``^2), so layers differ.

    Knobs: ``topic_strength`` sets co-activation (0: experts independent given popularity;
    3: tokens of a topic share most experts); ``topic_zipf`` sets how much a few topics
    dominate (and so how concentrated the subset table is); ``popularity_skew`` sets
    per-expert load imbalance; ``noise`` the randomness of each choice. ``num_topics``
    defaults to 4 * num_experts / k. The defaults were set against the bundled gpt-oss-20b
    decode trace (E=32, k=4, 645 tokens): per layer on average, the top pair is chosen ~17x
    as often as under uniform routing (real: 16x), the top subset holds ~5% of tokens (real:
    5%) and the hottest expert ~2.8x the mean load (real: 3.0x); real decode repeats more
    subsets (~280 distinct against ~400 here), as consecutive tokens of a text correlate.

    ``expert_load`` (float [E] or [layers, E], any scale, e.g. SGLang's ``logical_count``)
    makes each layer's per-expert top-k frequency match that load: a per-expert bias is added
    to the logits and adjusted (log-ratio steps, at most ``match_iterations``) until the
    total variation sum|freq - target| / k is below ``match_tolerance`` (0.5%) or the
    iterations run out; with few tokens the reachable accuracy is about E / num_tokens.

    Memory: one layer's scores at a time, num_tokens * num_experts * 4 bytes (1M tokens of
    256 experts: 1 GB); generate larger traces in parts with different seeds.
    """
    num_tokens = check_count("num_tokens", num_tokens)
    num_experts = check_int("num_experts", num_experts, 1, MAX_EXPERTS)
    k = check_int("k", k, 1, num_experts)
    num_layers = check_count("num_layers", num_layers)
    seed = check_seed("seed", seed)
    match_iterations = check_count("match_iterations", match_iterations, low=0)
    if num_topics is None:
        num_topics = max(4, 4 * num_experts // k)
    num_topics = check_count("num_topics", num_topics)
    # NaN or inf knobs give NaN logits, and top-k of NaN picks the same experts for every
    # token: a trace that looks valid and is not.
    topic_zipf = check_non_negative("topic_zipf", topic_zipf)
    topic_strength = check_non_negative("topic_strength", topic_strength)
    popularity_skew = check_non_negative("popularity_skew", popularity_skew)
    noise = check_positive("noise", noise)
    share = _target_share(expert_load, num_layers, num_experts, k)
    rng = np.random.default_rng(seed)
    topic_weight = 1.0 / np.arange(1, num_topics + 1) ** topic_zipf
    topics = rng.choice(num_topics, size=num_tokens, p=topic_weight / topic_weight.sum())
    topk = np.empty((num_tokens, num_layers, k), dtype=np.int32)
    for layer in progress(range(num_layers), num_layers, "synthetic layers"):
        popularity = rng.normal(0.0, popularity_skew, num_experts)
        topic_logits = rng.normal(0.0, topic_strength, (num_topics, num_experts))
        scores = (popularity + topic_logits[topics]).astype(np.float32)
        scores += noise * rng.gumbel(size=scores.shape).astype(np.float32)
        if share is not None:
            scores += _match_share(
                scores, share[layer], k, match_iterations, match_tolerance
            ).astype(np.float32)
        topk[:, layer, :] = _top_k(scores, k)
    return Trace(topk, num_experts, layer_ids or list(range(num_layers)))
