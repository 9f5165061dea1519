"""moefast.io.synthetic: shape, determinism, skew, co-activation, matching a requested load
(synthetic_trace) and the one-layer routing of the tests and benchmarks (synthetic_topk)."""

from __future__ import annotations

import numpy as np
import pytest
from moefast import SubsetTable
from moefast.evaluate.coactivation import top_pairs
from moefast.io.readers import load_expert_load
from moefast.io.synthetic import synthetic_topk, synthetic_trace
from support.shared_data import DEEPSEEK_DECODE_LOAD as DEEPSEEK
from support.shared_data import OLMOE_C4_LOAD, needs_deepseek_statistics


def test_shape_ids_and_determinism():
    a = synthetic_trace(500, 16, 2, 3, seed=4)
    b = synthetic_trace(500, 16, 2, 3, seed=4)
    c = synthetic_trace(500, 16, 2, 3, seed=5)
    assert a.topk.shape == (500, 3, 2) and a.num_experts == 16
    np.testing.assert_array_equal(a.topk, b.topk)
    assert not np.array_equal(a.topk, c.topk)


def test_routing_is_skewed_and_correlated():
    e, k, tokens = 32, 4, 4000
    trace = synthetic_trace(tokens, e, k, 2, seed=0)
    table = trace.table(0)
    load = table.expert_load()
    assert load.max() / load.mean() > 1.5
    # Under uniform routing each pair holds k(k-1)/(E(E-1)) = 1.2% of tokens.
    _, _, _share, lift = top_pairs(table, 1)[0]
    assert lift > 5
    # A few subsets carry much of the traffic: far fewer than the C(32, 4) = 35,960 possible.
    assert len(table.prune(coverage=0.5)) < 0.25 * len(table)
    # Layers differ.
    assert not np.array_equal(trace.expert_load()[0], trace.expert_load()[1])


def test_no_topic_strength_means_little_co_activation():
    trace = synthetic_trace(4000, 32, 4, 1, seed=0, topic_strength=0.0, popularity_skew=0.0)
    assert top_pairs(trace.table(0), 1)[0][3] < 2.0


def relative_error(trace, target):
    got = trace.expert_load()
    want = trace.k * trace.num_tokens * target / target.sum(axis=1, keepdims=True)
    return np.abs(got - want).sum(axis=1) / got.sum(axis=1)


def test_matches_a_per_expert_load():
    rng = np.random.default_rng(1)
    target = rng.lognormal(0.0, 0.6, size=(2, 24))
    target[1, 5] = 0.0  # an expert nobody uses stays unused
    trace = synthetic_trace(6000, 24, 3, 2, seed=2, expert_load=target)
    assert (relative_error(trace, target) < 0.02).all()
    assert trace.expert_load()[1, 5] == 0


def test_one_dimensional_load_applies_to_every_layer():
    target = np.linspace(1.0, 4.0, 16)
    trace = synthetic_trace(4000, 16, 2, 3, seed=0, expert_load=target)
    assert (relative_error(trace, np.tile(target, (3, 1))) < 0.02).all()


@pytest.mark.parametrize(
    "source, experts, layers",
    [
        pytest.param(OLMOE_C4_LOAD, 64, [0, 1, 2], id="olmoe"),
        pytest.param(DEEPSEEK, 256, [0, 20, 57], id="deepseek-v3", marks=needs_deepseek_statistics),
    ],
)
@pytest.mark.slow
def test_matches_real_loads_within_one_percent(source, experts, layers):
    target = load_expert_load(source)[layers]
    trace = synthetic_trace(20000, experts, 8, 3, seed=0, expert_load=target)
    assert (relative_error(trace, target) < 0.01).all()
    hot = trace.expert_load().max(axis=1) / trace.expert_load().mean(axis=1)
    want = target.max(axis=1) / target.mean(axis=1)
    np.testing.assert_allclose(hot, want, rtol=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"expert_load": np.ones(5)}, "expert_load must be"),
        ({"expert_load": np.r_[100.0, np.ones(15)]}, "1/k"),
        ({"expert_load": np.r_[1.0, np.zeros(15)]}, "fewer than k"),
        ({"expert_load": -np.ones(16)}, "non-negative"),
        ({"noise": 0.0}, "noise"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_trace(100, 16, 2, 1, **kwargs)


def test_k_out_of_range():
    with pytest.raises(ValueError, match="k must be"):
        synthetic_trace(10, 4, 5, 1)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        # NaN knobs gave NaN logits: every token picked the same experts, silently.
        (dict(noise=float("nan")), ValueError, "noise must be positive and finite"),
        (dict(noise=float("inf")), ValueError, "noise must be positive and finite"),
        (dict(topic_strength=float("nan")), ValueError, "topic_strength must be finite"),
        (dict(popularity_skew=-1.0), ValueError, "popularity_skew must be finite and non-negative"),
        (dict(topic_zipf=-5.0), ValueError, "topic_zipf must be finite and non-negative"),
        (dict(seed=-1), ValueError, "seed must be at least 0"),
        (dict(num_topics=2.5), TypeError, "num_topics must be an int"),
        (dict(num_experts=70_000), ValueError, "num_experts must be at most 65535"),
        (dict(k=2.0), TypeError, "k must be an int"),
    ],
)
def test_bad_knobs_are_refused(kwargs, exc, match):
    args = dict(num_tokens=20, num_experts=8, k=2, num_layers=1) | kwargs
    with pytest.raises(exc, match=match):
        synthetic_trace(**args)


# --- synthetic_topk: one layer, topics boosting preferred experts ------------------------


def test_topk_is_deterministic_distinct_and_in_range():
    a = synthetic_topk(70_000, 64, 6, seed=3)  # more than one chunk of tokens
    assert a.shape == (70_000, 6) and a.dtype == np.int32
    assert a.min() >= 0 and a.max() < 64
    assert (np.diff(np.sort(a, axis=1), axis=1) > 0).all()
    np.testing.assert_array_equal(a, synthetic_topk(70_000, 64, 6, seed=3))
    assert not np.array_equal(a, synthetic_topk(70_000, 64, 6, seed=4))
    assert synthetic_topk(0, 8, 2).shape == (0, 2)


def test_topk_is_skewed_and_co_activated_by_topics():
    e, k, tokens = 32, 4, 20_000
    table = SubsetTable.from_topk(synthetic_topk(tokens, e, k, seed=0), e)
    load = table.expert_load()
    assert load.max() / load.mean() > 2
    assert top_pairs(table, 1)[0][3] > 5  # the top pair, against uniform routing
    # Without topics or popularity the choice is uniform: no pair stands out.
    flat = synthetic_topk(tokens, e, k, seed=0, boost=0.0, popularity_skew=0.0)
    flat_table = SubsetTable.from_topk(flat, e)
    assert top_pairs(flat_table, 1)[0][3] < 1.5
    assert flat_table.expert_load().max() / flat_table.expert_load().mean() < 1.15


def test_topk_boost_range_draws_each_boost():
    fixed = synthetic_topk(2000, 16, 2, seed=1, boost=2.5)
    assert np.array_equal(fixed, synthetic_topk(2000, 16, 2, seed=1, boost=(2.5, 2.5)))
    assert not np.array_equal(fixed, synthetic_topk(2000, 16, 2, seed=1, boost=(1.5, 3.5)))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(k=9), ValueError, "k must be at most 8"),
        (dict(num_tokens=-1), ValueError, "num_tokens must be at least 0"),
        (dict(num_topics=0), ValueError, "num_topics must be at least 1"),
        (dict(preferred=9), ValueError, "preferred must be at most 8"),
        (dict(boost=(3.0, 1.0)), ValueError, "low <= high"),
        (dict(boost=float("nan")), ValueError, "boost must be finite and non-negative"),
        (dict(noise=0), ValueError, "noise must be positive and finite"),
        (dict(seed=1.0), TypeError, "seed must be an int"),
    ],
)
def test_topk_bad_knobs_are_refused(kwargs, exc, match):
    args = dict(num_tokens=10, num_experts=8, k=2) | kwargs
    with pytest.raises(exc, match=match):
        synthetic_topk(**args)
