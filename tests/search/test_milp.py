"""moefast.search.milp: the exact MILP against a brute force over all placements, its size guard,
its time limit and the warning when it stops before proving optimality."""

import moefast as mf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moefast import _core
from moefast.search.milp import solve_milp
from support.reference import all_full_placements
from support.workloads import skewed_table


def brute_force_optimum(table, num_gpus, slots_per_gpu) -> float:
    return min(
        mf.expected_cost(table, mf.Placement(r))
        for r in all_full_placements(table.num_experts, num_gpus, slots_per_gpu)
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.sampled_from(
        [(4, 2, 2, 2), (5, 2, 2, 3), (6, 2, 3, 2), (6, 3, 2, 4), (5, 3, 2, 3), (6, 2, 3, 3)]
    ),
)
def test_milp_equals_brute_force(seed, shape):
    num_experts, k, num_gpus, slots = shape
    table = skewed_table(seed, num_experts, k)
    placement = mf.optimize(table, num_gpus, slots, method="milp")
    assert placement.slots_used.tolist() == [slots] * num_gpus
    assert mf.expected_cost(table, placement) == pytest.approx(
        brute_force_optimum(table, num_gpus, slots)
    )


def test_milp_on_a_mixtral_size_layer_meets_its_bound():
    table = skewed_table(1, 8, 2, tokens=2000)
    result = solve_milp(table, 2, 5)
    assert result.optimal and result.cost == pytest.approx(result.bound)
    assert result.cost == pytest.approx(brute_force_optimum(table, 2, 5))


def test_milp_refuses_large_instances():
    table = skewed_table(2, 64, 6, tokens=5000)
    with pytest.raises(ValueError, match="assignment variables"):
        mf.optimize(table, 8, 9, method="milp")


def test_milp_time_limit_warns_when_not_proven():
    table = skewed_table(3, 16, 4, tokens=3000)
    with pytest.warns(mf.NotProvenOptimalWarning, match="not proven optimal"):
        placement = mf.optimize(table, 4, 5, method="milp", budget=mf.Budget(time_limit=0.5))
    assert placement.slots_used.tolist() == [5] * 4
    assert placement.replicas.any(axis=1).all()


@pytest.mark.parametrize("limit", [-1.0, float("nan"), 0])
def test_milp_time_limit_must_be_positive(limit):
    # HiGHS ignored an invalid limit and ran without one.
    with pytest.raises(ValueError, match="time_limit must be positive and finite"):
        mf.optimize(skewed_table(5, 8, 2), 2, 4, method="milp", time_limit=limit)


def test_milp_never_returns_worse_than_its_start():
    table = skewed_table(6, 16, 4, tokens=3000)
    start = _core.fill_free_slots(
        mf.Placement(
            np.eye(16, 4, dtype=bool)
            | np.eye(16, 4, k=-4, dtype=bool)
            | np.eye(16, 4, k=-8, dtype=bool)
            | np.eye(16, 4, k=-12, dtype=bool)
        ),
        5,
        table.expert_load(),
    )
    with pytest.warns(mf.NotProvenOptimalWarning):
        placement = mf.optimize(table, 4, 5, method="milp", budget=mf.Budget(time_limit=0.3))
    result = solve_milp(table, 4, 5, time_limit=0.3, start=start)
    assert result.cost <= mf.expected_cost(table, start) + 1e-12
    assert result.bound <= result.cost
    assert placement.slots_used.tolist() == [5] * 4


def test_milp_stopped_before_any_placement_returns_the_start():
    # A limit too short for HiGHS to find a placement used to give "expert 0 has no
    # replica" (the column values were not a placement); now the start is returned.
    table = skewed_table(3, 16, 4, tokens=3000)
    start = mf.optimize(table, 4, 5)
    result = solve_milp(table, 4, 5, time_limit=1e-6, start=start)
    assert not result.optimal
    assert result.cost <= mf.expected_cost(table, start) + 1e-12
    assert result.bound <= result.cost
    with pytest.raises(RuntimeError, match="no placement within the time limit"):
        solve_milp(table, 4, 5, time_limit=1e-6)
    with pytest.warns(mf.NotProvenOptimalWarning):
        placement = mf.optimize(table, 4, 5, method="milp", budget=mf.Budget(time_limit=1e-6))
    assert mf.expected_cost(table, placement) <= mf.expected_cost(table, start) + 1e-12
