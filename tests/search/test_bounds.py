"""Lower bounds on the expected decode cost: never above the exact optimum (the MILP),
never below ceil(k / G), and the certificate's gap."""

from __future__ import annotations

import math

import moefast as mf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moefast.search.bounds import certify, milp_bound
from moefast.search.milp import solve_milp


@st.composite
def small_cases(draw):
    num_experts = draw(st.integers(4, 6))
    num_gpus = draw(st.integers(2, 3))
    k = draw(st.integers(2, min(3, num_gpus)))
    slots = draw(st.integers(math.ceil(num_experts / num_gpus), num_experts // 2 + 1))
    rows = draw(st.integers(3, 10))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    topk = np.stack([rng.choice(num_experts, k, replace=False) for _ in range(rows * 3)])
    return mf.SubsetTable.from_topk(topk, num_experts), num_gpus, slots


@settings(max_examples=25, deadline=None)
@given(small_cases())
def test_collision_bound_never_exceeds_the_optimum(case):
    table, num_gpus, slots = case
    bound = mf.lower_bound(table, num_gpus, slots)
    exact = solve_milp(table, num_gpus, slots)
    assert exact.optimal
    assert mf.lower_bound(table, num_gpus) <= bound <= exact.cost + 1e-9


def test_bounds_are_valid_and_the_collision_bound_is_exact_on_a_clique():
    # Every pair of 4 experts co-activated equally, 2 GPUs x 2 slots: any placement puts
    # two pairs on one GPU each, 2 of the 6 rows cost 2 rounds, as the bound says.
    pairs = np.array([[a, b] for a in range(4) for b in range(a + 1, 4)])
    table = mf.SubsetTable.from_topk(pairs, 4)
    assert mf.lower_bound(table, 2, 2) == pytest.approx(1 + 2 / 6)
    assert solve_milp(table, 2, 2).cost == pytest.approx(1 + 2 / 6)
    bound, optimal = milp_bound(table, 2, 2, max_subsets=6)
    assert optimal and bound == pytest.approx(1 + 2 / 6)
    # On the 3 heaviest rows only, the rest counted at one round each: still a bound.
    part, _ = milp_bound(table, 2, 2, max_subsets=3)
    assert 1 <= part <= bound + 1e-12


def test_certificate_reports_the_best_bound_and_the_gap():
    rng = np.random.default_rng(0)
    topk = np.stack(
        [rng.choice(6, 2, replace=False, p=[0.4, 0.3, 0.1, 0.1, 0.05, 0.05]) for _ in range(200)]
    )
    table = mf.SubsetTable.from_topk(topk, 6)
    placement = mf.optimize(table, 2, 4, method="round_robin")
    cert = certify(table, placement, 4, milp_time_limit=5.0, milp_subsets=15)
    assert cert.cost == pytest.approx(mf.expected_cost(table, placement))
    assert set(cert.bounds) == {"ceil_k_g", "collision", "milp"}
    assert cert.bound == max(cert.bounds.values()) <= cert.cost + 1e-12
    assert cert.gap == pytest.approx(cert.cost / cert.bound - 1)
    with pytest.raises(ValueError, match="max_subsets"):
        milp_bound(table, 2, 4, max_subsets=0)
    with pytest.raises(ValueError, match="cannot hold"):
        mf.lower_bound(table, 2, 2)
    with pytest.raises(TypeError, match="slots_per_gpu"):
        mf.lower_bound(table, 2, "4")
