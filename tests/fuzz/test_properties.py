"""Hypothesis properties of the public API against the plain references of tests/:
tables, subset costs, expected costs, bounds, optimizers, batch times, simulation, the
cost model, pickling and scale invariance."""

from __future__ import annotations

import copy
import math
import pickle

import moefast as mf
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.batch_reference import brute_force_batch_time
from support.batch_reference import expert_time as reference_expert_time
from support.fuzz import COUNTS, PROFILE
from support.reference import (
    all_full_placements,
    reference_cost,
    reference_expected_cost,
    reference_table,
)
from support.strategies import random_replicas, tiny_batches, topk_arrays

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]


@st.composite
def weighted_topk(draw):
    topk, num_experts = draw(topk_arrays(max_experts=24, max_k=6, max_tokens=50))
    weights = None
    if draw(st.booleans()):
        weights = np.array(
            draw(
                st.lists(
                    st.floats(0, 1e6, allow_nan=False),
                    min_size=len(topk),
                    max_size=len(topk),
                )
            )
        )
    return topk, num_experts, weights


@PROFILE
@given(weighted_topk())
def test_table_matches_the_dictionary_count(case):
    COUNTS["generated cases"] += 1
    topk, num_experts, weights = case
    table = mf.SubsetTable.from_topk(topk, num_experts, weights)
    expected = reference_table(topk, weights)
    got = {tuple(r): w for r, w in zip(table.subsets.tolist(), table.weights, strict=True)}
    assert got.keys() == expected.keys()
    for key, w in expected.items():
        assert got[key] == pytest.approx(w, rel=1e-12, abs=1e-300)
    assert (np.diff(table.weights) <= 0).all()  # heaviest first
    assert math.copysign(1.0, table.total_weight) == 1.0


@st.composite
def table_and_placement(draw):
    topk, num_experts = draw(topk_arrays(max_experts=14, max_k=5, max_tokens=40))
    if len(topk) == 0:
        topk = np.arange(min(num_experts, topk.shape[1]))[None, :]
    num_gpus = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    replicas = random_replicas(rng, num_experts, num_gpus, 3)
    return mf.SubsetTable.from_topk(topk, num_experts), replicas


@PROFILE
@given(table_and_placement())
def test_costs_match_the_matching_reference(case):
    COUNTS["generated cases"] += 1
    table, replicas = case
    placement = mf.Placement(replicas)
    costs = mf.subset_costs(table, placement)
    for row, cost in zip(table.subsets.tolist(), costs.tolist(), strict=True):
        assert cost == reference_cost(row, replicas)
    expected = {tuple(r): w for r, w in zip(table.subsets.tolist(), table.weights, strict=True)}
    assert mf.expected_cost(table, placement) == pytest.approx(
        reference_expected_cost(expected, replicas), rel=1e-12
    )
    assert mf.lower_bound(table, placement.num_gpus) <= mf.expected_cost(table, placement) + 1e-12


@st.composite
def small_problems(draw):
    num_experts = draw(st.integers(2, 6))
    num_gpus = draw(st.integers(1, 3))
    slots = draw(st.integers(-(-num_experts // num_gpus), num_experts))
    k = draw(st.integers(1, min(3, num_experts)))
    rows = draw(
        st.lists(st.permutations(range(num_experts)), min_size=1, max_size=12).map(
            lambda perms: [p[:k] for p in perms]
        )
    )
    weights = draw(st.lists(st.integers(1, 20), min_size=len(rows), max_size=len(rows)))
    table = mf.SubsetTable.from_subsets(np.array(rows), np.array(weights, float), num_experts)
    return table, num_gpus, slots


@PROFILE
@given(small_problems(), st.sampled_from(["greedy", "eplb", "round_robin", "contiguous"]))
def test_optimizers_fill_every_slot_and_never_beat_the_optimum(problem, method):
    COUNTS["generated cases"] += 1
    table, num_gpus, slots = problem
    placement = mf.optimize(table, num_gpus, slots, method=method)
    assert (placement.slots_used == slots).all()
    assert placement.replicas.any(axis=1).all()
    cost = mf.expected_cost(table, placement)
    subsets = {tuple(r): w for r, w in zip(table.subsets.tolist(), table.weights, strict=True)}
    best = min(
        reference_expected_cost(subsets, r)
        for r in all_full_placements(table.num_experts, num_gpus, slots)
    )
    assert cost >= best - 1e-12
    assert cost >= mf.lower_bound(table, num_gpus) - 1e-12


@PROFILE
@given(small_problems(), st.integers(-60, 60), st.integers(0, 3))
def test_scaling_every_weight_keeps_the_greedy_placement(problem, exponent, seed):
    COUNTS["generated cases"] += 1
    table, num_gpus, slots = problem
    scaled = mf.SubsetTable.from_subsets(
        table.subsets, table.weights * 10.0**exponent, table.num_experts
    )
    assert mf.optimize(scaled, num_gpus, slots, seed=seed) == mf.optimize(
        table, num_gpus, slots, seed=seed
    )


@PROFILE
@given(
    tiny_batches(max_tokens=3),
    st.floats(0, 200),
    st.floats(0, 5),
    st.sampled_from([1.0, 1.5, 2.0, 3.0, math.inf]),
)
def test_batch_time_is_a_real_assignment_above_its_bound(case, alpha, beta, p):
    COUNTS["generated cases"] += 1
    topk, lists, g = case
    placement = mf.Placement.from_lists(lists, g)
    time, bound = mf.batch_time(topk, placement, mf.CostModel(alpha, beta, p), return_bound=True)
    optimum = brute_force_batch_time(topk, lists, alpha, beta, p)
    assert optimum * (1 - 1e-9) - 1e-9 <= time
    assert bound <= optimum * (1 + 1e-9) + 1e-9
    if alpha == 0 or beta == 0:
        assert time == pytest.approx(optimum, rel=1e-9, abs=1e-12)


@PROFILE
@given(table_and_placement(), st.floats(1, 500), st.integers(0, 2**32), st.integers(1, 30))
def test_simulated_single_tokens_cost_alpha_rounds(case, alpha, seed, steps):
    """B = 1 and beta = 0: every step is alpha times the subset cost of the drawn row."""
    COUNTS["generated cases"] += 1
    table, replicas = case
    placement = mf.Placement(replicas)
    if table.total_weight == 0:
        return
    costs = mf.subset_costs(table, placement)
    cm = mf.CostModel(alpha, 0.0)
    (result,) = mf.simulate(table, placement, [1], cm, seed=seed, steps=steps)
    assert alpha * costs.min() - 1e-9 <= result["mean_step_time"] <= alpha * costs.max() + 1e-9
    again = mf.simulate(table, placement, [1], cm, seed=seed, steps=steps)
    assert again == [result]


@PROFILE
@given(
    st.floats(0, 1e4),
    st.floats(0, 1e2),
    st.sampled_from([1.0, 1.25, 2.0, 7.0, math.inf]),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
)
def test_cost_model_matches_the_formula(alpha, beta, p, tokens):
    COUNTS["generated cases"] += 1
    cm = mf.CostModel(alpha, beta, p)
    got = cm.expert_time(np.array(tokens))
    for n, t in zip(tokens, got, strict=True):
        assert t == pytest.approx(reference_expert_time(n, alpha, beta, p), rel=1e-9, abs=1e-12)


@PROFILE
@given(table_and_placement(), st.floats(0.01, 1.0))
def test_pickle_and_copy_round_trip_exactly(case, coverage):
    COUNTS["generated cases"] += 1
    table, replicas = case
    placement = mf.Placement(replicas)
    for t in (table, table.prune(coverage=coverage)):
        for clone in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
            assert np.array_equal(clone.subsets, t.subsets)
            assert np.array_equal(clone.weights, t.weights)
            assert clone.coverage == t.coverage
    assert pickle.loads(pickle.dumps(placement)) == placement
