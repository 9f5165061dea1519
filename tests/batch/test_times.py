import math

import moefast as mf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moefast.batch.times import step_times
from moefast.io.engines.dispatch import dispatch_maps
from moefast.io.engines.slots import placement_from_slots
from moefast.placement import ModelPlacement
from support.batch_reference import brute_force_batch_time, expert_time
from support.dispatch_reference import sglang_reference
from support.strategies import tiny_batches


@settings(max_examples=300, deadline=None)
@given(tiny_batches(max_tokens=4), st.floats(0.1, 100))
def test_exact_when_beta_is_zero(case, alpha):
    topk, lists, g = case
    p = mf.Placement.from_lists(lists, g)
    got = mf.batch_time(topk, p, mf.CostModel(alpha, 0.0))
    assert got == pytest.approx(brute_force_batch_time(topk, lists, alpha, 0.0, 1.0), rel=1e-12)


@settings(max_examples=300, deadline=None)
@given(tiny_batches(max_tokens=4), st.floats(0.1, 100), st.sampled_from([1.0, 1.5, 2.0, math.inf]))
def test_exact_when_alpha_is_zero(case, beta, shape):
    topk, lists, g = case
    p = mf.Placement.from_lists(lists, g)
    got = mf.batch_time(topk, p, mf.CostModel(0.0, beta, shape))
    assert got == pytest.approx(brute_force_batch_time(topk, lists, 0.0, beta, shape), rel=1e-12)


@settings(max_examples=400, deadline=None)
@given(tiny_batches(max_tokens=4), st.floats(0.01, 10), st.sampled_from([1.0, 1.5, 2.0, math.inf]))
def test_mixed_within_five_percent_and_never_below(case, ratio, shape):
    topk, lists, g = case
    p = mf.Placement.from_lists(lists, g)
    cm = mf.CostModel(ratio, 1.0, shape)
    got, bound = mf.batch_time(topk, p, cm, return_bound=True)
    opt = brute_force_batch_time(topk, lists, ratio, 1.0, shape)
    assert opt * (1 - 1e-12) <= got <= opt * 1.05
    assert bound <= opt * (1 + 1e-12)


def test_union_of_many_experts_with_beta_zero():
    # 40 experts on 4 GPUs, one replica each, 10 per GPU: the union costs 10 rounds.
    lists = [[e % 4] for e in range(40)]
    topk = np.arange(40).reshape(20, 2)
    p = mf.Placement.from_lists(lists, 4)
    assert mf.batch_time(topk, p, mf.CostModel(3.0, 0.0)) == pytest.approx(30.0)


def test_batch_of_one_is_the_subset_cost():
    lists = [[0], [0], [1], [0, 1]]
    p = mf.Placement.from_lists(lists, 2)
    table = mf.SubsetTable.from_subsets(
        np.array([[0, 1], [0, 2], [0, 1]]), np.ones(3), num_experts=4
    )
    costs = mf.subset_costs(table, p)
    cm = mf.CostModel(10.0, 1.0, 2.0)
    for row, c in zip(table.subsets, costs, strict=True):
        assert mf.batch_time(row[None, :], p, cm) == pytest.approx(
            c * expert_time(1, 10.0, 1.0, 2.0)
        )


def test_bound_is_close_on_a_large_batch():
    rng = np.random.default_rng(0)
    lists = [[e % 16, (e * 5 + 1) % 16] if e % 3 == 0 else [e % 16] for e in range(128)]
    p = mf.Placement.from_lists(lists, 16)
    topk = np.argsort(rng.random((2048, 128)) ** (1 + np.arange(128) / 32), axis=1)[:, :8]
    got, bound = mf.batch_time(topk, p, mf.CostModel(130, 0.5, 2.0), return_bound=True)
    assert bound <= got <= bound * 1.10


@pytest.mark.parametrize(
    "topk, exc, match",
    [
        (np.array([0, 1]), ValueError, "2-dimensional"),
        (np.array([[0, 4]]), ValueError, "out of range"),
        (np.array([[-1, 0]]), ValueError, "out of range"),
        (np.array([[1, 1]]), ValueError, "twice"),
        (np.array([[0.0, 1.0]]), TypeError, "integer"),
    ],
)
def test_batch_time_rejects_bad_batches(topk, exc, match):
    p = mf.Placement.from_lists([[0], [1], [0], [1]], 2)
    with pytest.raises(exc, match=match):
        mf.batch_time(topk, p, mf.CostModel(1, 1))


def test_batch_time_rejects_wrong_argument_types():
    p = mf.Placement.from_lists([[0], [1]], 2)
    with pytest.raises(TypeError, match="CostModel"):
        mf.batch_time(np.array([[0]]), p, (1.0, 1.0))
    with pytest.raises(TypeError, match="Placement"):
        mf.batch_time(np.array([[0]]), [[0], [1]], mf.CostModel(1, 1))


def _trace(num_tokens=500, num_experts=8, k=2, layers=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (num_tokens, k) if layers is None else (num_tokens, layers, k)
    scores = rng.random((*shape[:-1], num_experts)) ** np.linspace(1, 3, num_experts)
    return np.argsort(-scores, axis=-1)[..., :k]


def test_simulate_shapes_and_determinism():
    topk = _trace()
    p = mf.Placement.from_lists([[e % 4, (e + 1) % 4] if e < 2 else [e % 4] for e in range(8)], 4)
    cm = mf.CostModel(130, 0.5, 2.0)
    a = mf.simulate(topk, p, [1, 8, 64], cm, seed=3, steps=200)
    b = mf.simulate(topk, p, [1, 8, 64], cm, seed=3, steps=200)
    c = mf.simulate(topk, p, [1, 8, 64], cm, seed=4, steps=200)
    assert a == b and a != c
    assert [r["batch_size"] for r in a] == [1, 8, 64]
    for r in a:
        assert set(r) == {
            "batch_size",
            "mean_step_time",
            "p50_step_time",
            "p99_step_time",
            "throughput",
            "latency_per_token",
        }
        assert r["p50_step_time"] <= r["p99_step_time"]
        assert r["throughput"] == pytest.approx(r["batch_size"] / r["mean_step_time"])
        assert r["latency_per_token"] == r["mean_step_time"]
    # Bigger batches take longer per step but serve more tokens per unit of time.
    assert a[0]["mean_step_time"] < a[2]["mean_step_time"]
    assert a[0]["throughput"] < a[2]["throughput"]


def test_simulate_batch_of_one_matches_expected_cost():
    topk = _trace(num_tokens=400)
    table = mf.SubsetTable.from_topk(topk, num_experts=8)
    p = mf.Placement.from_lists([[e % 3] for e in range(8)], 3)
    cm = mf.CostModel(10.0, 0.0)
    (r,) = mf.simulate(table, p, 1, cm, steps=20_000)
    exact = mf.expected_cost(table, p) * 10.0
    assert r["mean_step_time"] == pytest.approx(exact, rel=0.03)


def test_simulate_whole_model_sums_layers():
    topk = _trace(layers=3)
    lists = [[e % 4] for e in range(8)]
    mp = ModelPlacement([mf.Placement.from_lists(lists, 4)] * 3, slots_per_gpu=2)
    cm = mf.CostModel(10.0, 0.0)
    (model,) = mf.simulate(topk, mp, 1, cm, steps=500, seed=1)
    per_layer = [
        mf.simulate(topk[:, layer, :], mp[layer], 1, cm, steps=500, seed=1)[0]["mean_step_time"]
        for layer in range(3)
    ]
    # The same tokens are drawn for every layer, so the model's steps sum the layers'.
    assert model["mean_step_time"] == pytest.approx(sum(per_layer))
    assert mf.simulate(mf.Trace(topk, 8), mp, 1, cm, steps=500, seed=1) == [model]


def test_simulate_takes_one_table_per_layer():
    topk = _trace(layers=2)
    tables = [mf.SubsetTable.from_topk(topk[:, layer, :], 8) for layer in range(2)]
    mp = ModelPlacement([mf.Placement.from_lists([[e % 4] for e in range(8)], 4)] * 2, 2)
    cm = mf.CostModel(10.0, 0.0)
    (both,) = mf.simulate(tables, mp, 4, cm, steps=300, seed=2)
    alone = [mf.simulate(t, mp[i], 4, cm, steps=300, seed=2)[0] for i, t in enumerate(tables)]
    # Each layer is drawn from its own table: the model's mean is the sum of the layers'.
    assert both["mean_step_time"] == pytest.approx(sum(r["mean_step_time"] for r in alone))


def test_simulate_refuses_what_is_not_a_trace_by_type():
    class LooksLikeATrace:
        topk = _trace(layers=1)

    p = mf.Placement.from_lists([[e % 4] for e in range(8)], 4)
    with pytest.raises(TypeError, match=r"expected a moefast\.Trace.*got LooksLikeATrace"):
        mf.simulate(LooksLikeATrace(), p, 1, mf.CostModel(1, 1))
    with pytest.raises(TypeError, match="table 1 must be a SubsetTable, got str"):
        mf.simulate([mf.SubsetTable.from_topk(_trace(), 8), "x"], [p, p], 1, mf.CostModel(1, 1))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(batch_sizes=[0]), ValueError, "at least 1"),
        (dict(batch_sizes=[1.5]), TypeError, "ints"),
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=2**40), ValueError, "step times"),
        (dict(batch_sizes=[2**30]), ValueError, "batch sizes"),
        (dict(seed=-1), ValueError, "seed"),
        # Beyond int64 these were pyo3 OverflowErrors.
        (
            dict(seed=2**64),
            ValueError,
            "seed must be at most 9223372036854775807, got 18446744073709551616",
        ),
        (
            dict(batch_sizes=[2**70]),
            ValueError,
            "batch_sizes = 1180591620717411303424 is out of range",
        ),
        (dict(steps=2**70), ValueError, "steps must be at most 9223372036854775807, got 11805916"),
        (dict(cost_model=None), TypeError, "CostModel"),
    ],
)
def test_simulate_rejects_bad_arguments(kwargs, exc, match):
    topk = _trace()
    p = mf.Placement.from_lists([[e % 4] for e in range(8)], 4)
    args = dict(batch_sizes=[4], cost_model=mf.CostModel(1, 1), steps=10, seed=0) | kwargs
    with pytest.raises(exc, match=match):
        mf.simulate(topk, p, **args)


def test_simulate_rejects_mismatched_layers_and_experts():
    p = mf.Placement.from_lists([[e % 4] for e in range(8)], 4)
    cm = mf.CostModel(1, 1)
    with pytest.raises(ValueError, match="layers"):
        mf.simulate(_trace(layers=2), p, 4, cm, steps=10)
    small = mf.Placement.from_lists([[e % 4] for e in range(6)], 4)
    with pytest.raises(ValueError, match="out of range"):
        mf.simulate(_trace(), small, 4, cm, steps=10)
    with pytest.raises(ValueError, match="shape"):
        mf.simulate(np.zeros((2, 2, 2, 2), dtype=int), p, 4, cm, steps=10)


def test_optimize_batch_lowers_the_sampled_step_time():
    from moefast.search.batch import optimize_batch

    # Tokens pick {0, 1} or {2, 3}: the start puts each co-activated pair on one GPU.
    topk = np.array([[0, 1], [2, 3]] * 50)
    start = mf.Placement.from_lists([[0], [0], [1], [1]], 2)
    cm = mf.CostModel(10.0, 0.1)
    p = optimize_batch(topk, start, 2, cm, batch_size=1, seed=0)
    assert p.slots_used.max() <= 2
    before = mf.simulate(topk, start, 1, cm, steps=200)[0]["mean_step_time"]
    after = mf.simulate(topk, p, 1, cm, steps=200)[0]["mean_step_time"]
    assert after == pytest.approx(cm.expert_time(1)) and before == pytest.approx(
        2 * cm.expert_time(1)
    )
    table = mf.SubsetTable.from_topk(topk, num_experts=4)
    assert optimize_batch(table, start, 2, cm, batch_size=1, seed=0) == p


def test_optimize_batch_rejects_bad_arguments():
    from moefast.search.batch import optimize_batch

    start = mf.Placement.from_lists([[0], [0], [1], [1]], 2)
    topk = np.array([[0, 1]])
    cm = mf.CostModel(1, 1)
    with pytest.raises(ValueError, match="slots_per_gpu"):
        optimize_batch(topk, start, 1, cm, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        optimize_batch(topk, start, 2, cm, batch_size=0)
    with pytest.raises(ValueError, match="out of range"):
        optimize_batch(np.array([[0, 4]]), start, 2, cm, batch_size=1)
    with pytest.raises(TypeError, match="start_placement"):
        optimize_batch(topk, None, 2, cm, batch_size=1)


def test_sharp_cost_model_times_are_finite():
    # alpha^p overflowed to inf for p of a few hundred: every step time came out inf.
    p = mf.Placement.from_lists([[0], [0], [1], [1]], 2)
    cm = mf.CostModel(2.0, 1.0, 1000.0)
    time, bound = mf.batch_time(np.array([[0, 1], [0, 2], [0, 3]]), p, cm, return_bound=True)
    assert math.isfinite(time) and math.isfinite(bound)
    # GPU 0 runs expert 0 (3 tokens, ~3 us) and expert 1 (1 token, ~2 us) at best.
    assert time == pytest.approx(5.0, rel=1e-3)
    assert cm.expert_time(1000) == pytest.approx(1000.0)


def test_optimize_batch_refuses_an_endless_sample():
    # 2^24 x 2^20 tokens passed each limit alone and then drew tokens for hours.
    from moefast.search.batch import optimize_batch

    table = mf.SubsetTable.from_topk(np.array([[0, 1], [2, 3]]), num_experts=4)
    start = mf.Placement.from_lists([[0], [0], [1], [1]], 2)
    with pytest.raises(ValueError, match="sampled tokens"):
        optimize_batch(table, start, 2, mf.CostModel(1, 1), 2**24, num_batches=2**20)


def test_fastest_placement_is_the_lowest_simulated_mean():
    from moefast.search.batch import fastest_placement

    topk = _trace(num_tokens=400)
    table = mf.SubsetTable.from_topk(topk, 8)
    cm = mf.CostModel(10.0, 1.0)
    candidates = [
        mf.Placement.from_lists([[e % 4] for e in range(8)], 4),
        mf.Placement.from_lists([[e // 2] for e in range(8)], 4),
        mf.Placement.from_lists([[e % 4, (e + 1) % 4] for e in range(8)], 4),
    ]
    means = [
        mf.simulate(table, p, 8, cm, seed=1, steps=256)[0]["mean_step_time"] for p in candidates
    ]
    got = fastest_placement(table, candidates, cm, 8, seed=1)
    assert got == candidates[int(np.argmin(means))]
    assert fastest_placement(table, candidates[:1], cm, 8) == candidates[0]
    with pytest.raises(ValueError, match="candidates is empty"):
        fastest_placement(table, [], cm, 8)


def test_trtllm_dispatch_follows_its_round_robin_at_every_batch_size():
    table = mf.SubsetTable.from_subsets([[0, 1], [1, 2], [0, 3]], [3.0, 2.0, 1.0], num_experts=4)
    placement = mf.Placement.from_lists([[0, 1], [1, 2], [0], [2]], num_gpus=3)
    cm = mf.CostModel(10.0, 1.0)
    # At most G tokens: one per rank, each rank's first pair: vLLM-Ascend's map.
    trt = mf.simulate(table, placement, [1, 3], cm, steps=50, dispatch="trtllm")
    ascend = mf.simulate(table, placement, [1, 3], cm, steps=50, dispatch="vllm-ascend")
    assert trt == ascend
    # Above, a rank's later pairs of an expert move on to its next replica: with one rank's
    # worth of tokens per GPU and more, the round robin spreads what the map piles up.
    many = mf.simulate(table, placement, [24], cm, steps=200, dispatch="trtllm")
    piled = mf.simulate(table, placement, [24], cm, steps=200, dispatch="vllm-ascend")
    assert many[0]["mean_step_time"] < piled[0]["mean_step_time"]
    # step_times are the steps simulate averages.
    rows = step_times(table, placement, [1, 3], cm, steps=50, dispatch="trtllm")
    assert rows.shape == (2, 50)
    assert [r["mean_step_time"] for r in trt] == pytest.approx(rows.mean(axis=1).tolist())


def test_static_rules_count_an_engine_maps_repeated_slots():
    # GPU 0 holds expert 0 twice, GPU 1 once: SGLang's fair draw for the ranks without it
    # (2 and 3) picks among three slots, two of them on GPU 0.
    slots = np.array([[0, 0, 1, 0, 2, 3, 4, 5, 6, 7, 1, 2]])
    placement = placement_from_slots(slots[0], 4, 8, "test")
    model = ModelPlacement(placements=[placement], slots_per_gpu=3, slots=slots)
    (with_repeats,) = dispatch_maps([placement], "sglang-static", slots)
    (without,) = dispatch_maps([placement], "sglang-static")
    topk = np.array([[0, 1], [0, 4], [2, 0], [0, 6]])
    cm = mf.CostModel(10.0, 1.0)
    got = step_times(topk, model, [4], cm, steps=64, dispatch="sglang-static")
    alone = step_times(topk, [placement], [4], cm, steps=64, dispatch="sglang-static")
    np.testing.assert_array_equal(with_repeats, sglang_reference(slots, 4)[:, 0, :] // 3)
    assert (with_repeats != without).any()
    assert not np.array_equal(got, alone)
