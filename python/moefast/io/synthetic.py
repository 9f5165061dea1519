"""Synthetic routing with skewed expert popularity and co-activation: the one generator
of the package, the tests and the benchmarks.

Uniformly random subsets make placement nearly trivial, so tests and benchmarks need traces
whose experts are used unevenly and chosen together in groups, as real routers do. Both
generators here use one topic model: every token draws a latent topic from a Zipf law, and
picks the top k of popularity + topic logits + noise * Gumbel (sampling k experts without
replacement). `synthetic_trace` (whole models, dense Gaussian topic logits, set against
real gpt-oss routing) and `synthetic_topk` (one layer, each topic boosting a few preferred
experts, the benchmarks' DeepSeek-scale workloads) differ in how they draw the logits.
"""

from __future__ import annotations

import numpy as np

from moefast._util.checks import (
    check_count,
    check_int,
    check_non_negative,
    check_positive,
    check_seed,
)
from moefast._util.progress import progress
from moefast.trace import MAX_EXPERTS, SYNTHETIC, Trace


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


def _zipf_topics(
    rng: np.random.Generator, num_topics: int, exponent: float, num_tokens: int
) -> np.ndarray:
    """Each token's topic, topic t drawn with weight 1 / (t + 1)^exponent."""
    weight = 1.0 / np.arange(1, num_topics + 1) ** exponent
    return rng.choice(num_topics, size=num_tokens, p=weight / weight.sum())


#: Tokens scored at a time by `synthetic_topk`: bounds the float32 logits to 64k x E.
_CHUNK = 65_536


def synthetic_topk(
    num_tokens: int,
    num_experts: int,
    k: int,
    *,
    seed: int = 0,
    num_topics: int | None = None,
    topic_zipf: float = 1.1,
    preferred: int | None = None,
    boost: float | tuple[float, float] = 5.0,
    popularity_skew: float = 0.6,
    noise: float = 1.0,
) -> np.ndarray:
    """Expert ids of one layer, int32 [num_tokens, k], distinct in every row.

    Model: expert e's logit for a token of topic t is

        -popularity_skew * log(1 + rank[e]) + boost[t, e] + noise * Gumbel

    where rank is a random order of the experts (a Zipf-like popularity), topics follow a
    Zipf law of exponent ``topic_zipf`` over ``num_topics`` topics (default
    max(8, num_experts // 2)), and each topic adds ``boost`` to ``preferred`` random experts
    (default k + k // 2); ``boost`` = (low, high) draws each boost uniformly. The token
    picks the k largest logits. So a few subsets are very frequent, as in real decode
    routing, and experts are co-activated in groups that do not follow their ids.

    With num_topics=512, topic_zipf=1.0, preferred=2k, boost=(1.5, 3.5),
    popularity_skew=0.8 and noise=0.4, E=64, k=6 and 1M tokens, ~10^5 subsets hold 99% of
    the tokens and the hottest expert carries ~5x the mean load (DeepSeek-scale routing).
    Deterministic for a given seed.
    """
    num_tokens = check_count("num_tokens", num_tokens, low=0)
    num_experts = check_int("num_experts", num_experts, 1, MAX_EXPERTS)
    k = check_int("k", k, 1, num_experts)
    seed = check_seed("seed", seed)
    num_topics = check_count(
        "num_topics", max(8, num_experts // 2) if num_topics is None else num_topics
    )
    preferred = check_int(
        "preferred",
        min(num_experts, k + k // 2) if preferred is None else preferred,
        0,
        num_experts,
    )
    topic_zipf = check_non_negative("topic_zipf", topic_zipf)
    popularity_skew = check_non_negative("popularity_skew", popularity_skew)
    noise = check_positive("noise", noise)
    if isinstance(boost, tuple):
        low, high = (check_non_negative(f"boost[{i}]", b) for i, b in enumerate(boost))
        if low > high:
            raise ValueError(f"boost must be (low, high) with low <= high, got {boost}")
    else:
        low = high = check_non_negative("boost", boost)
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(num_experts)
    popularity = -popularity_skew * np.log1p(ranks).astype(np.float32)
    topic_logits = np.tile(popularity, (num_topics, 1))
    for t in range(num_topics):
        favoured = rng.choice(num_experts, size=preferred, replace=False)
        # A fixed boost takes nothing from the random stream; a range draws each boost.
        topic_logits[t, favoured] += low if low == high else rng.uniform(low, high, preferred)
    topics = _zipf_topics(rng, num_topics, topic_zipf, num_tokens)
    out = np.empty((num_tokens, k), dtype=np.int32)
    for start in range(0, num_tokens, _CHUNK):
        stop = min(start + _CHUNK, num_tokens)
        logits = topic_logits[topics[start:stop]]
        gumbel = rng.gumbel(size=logits.shape).astype(np.float32)
        logits += gumbel if noise == 1.0 else noise * gumbel
        out[start:stop] = _top_k(logits, k)
    return out


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
    *,
    seed: int = 0,
    expert_load: np.ndarray | None = None,
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
    topics = _zipf_topics(rng, num_topics, topic_zipf, num_tokens)
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
    return Trace(topk, num_experts, layer_ids or list(range(num_layers)), source=SYNTHETIC)
