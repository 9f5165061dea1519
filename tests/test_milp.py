import moefast as mf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import all_full_placements


def brute_force_optimum(table, num_gpus, slots_per_gpu) -> float:
    return min(
        mf.expected_cost(table, mf.Placement(r))
        for r in all_full_placements(table.num_experts, num_gpus, slots_per_gpu)
    )


def skewed_table(seed: int, num_experts: int, k: int, tokens: int = 200) -> mf.SubsetTable:
    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.full(num_experts, 0.5))
    topk = np.stack(
        [rng.choice(num_experts, size=k, replace=False, p=popularity) for _ in range(tokens)]
    )
    return mf.SubsetTable.from_topk(topk, num_experts=num_experts)


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
    result = mf.milp.solve_milp(table, 2, 5)
    assert result.optimal and result.cost == pytest.approx(result.bound)
    assert result.cost == pytest.approx(brute_force_optimum(table, 2, 5))


def test_milp_refuses_large_instances():
    table = skewed_table(2, 64, 6, tokens=5000)
    with pytest.raises(ValueError, match="assignment variables"):
        mf.optimize(table, 8, 9, method="milp")


def test_milp_time_limit_warns_when_not_proven():
    table = skewed_table(3, 16, 4, tokens=3000)
    with pytest.warns(mf.NotProvenOptimalWarning, match="not proven optimal"):
        placement = mf.optimize(table, 4, 5, method="milp", time_limit=0.5)
    assert placement.slots_used.tolist() == [5] * 4
    assert placement.replicas.any(axis=1).all()


@pytest.mark.parametrize(
    "num_gpus, slots, message",
    [
        (2, 3, "cannot hold 8 experts"),
        (2, 9, "more than the 8 experts"),
        (0, 4, "num_gpus must be at least 1"),
        (2, 0, "slots_per_gpu must be at least 1"),
    ],
)
def test_infeasible_memory_is_refused(num_gpus, slots, message):
    table = skewed_table(4, 8, 2)
    with pytest.raises(ValueError, match=message):
        mf.optimize(table, num_gpus, slots, method="milp")


def test_bad_optimize_arguments():
    table = skewed_table(5, 8, 2)
    with pytest.raises(ValueError, match="unknown method 'best'"):
        mf.optimize(table, 2, 4, method="best")
    with pytest.raises(TypeError, match="table must be a SubsetTable"):
        mf.optimize(np.zeros((3, 2)), 2, 4)
    with pytest.raises(TypeError, match="num_gpus must be an int"):
        mf.optimize(table, 2.0, 4)


@pytest.mark.parametrize("method", ["milp", "greedy", "eplb"])
def test_out_of_range_integers_and_limits(method):
    table = skewed_table(5, 8, 2)
    # The MILP path reported 10^20 assignment variables, the others an OverflowError.
    with pytest.raises(ValueError, match="num_gpus must be at most 1024, got 18446744073709551616"):
        mf.optimize(table, 2**64, 4, method=method)
    with pytest.raises(ValueError, match="seed must be at least 0, got -1"):
        mf.optimize(table, 2, 4, method=method, seed=-1)
    with pytest.raises(ValueError, match="seed must be at most"):
        mf.optimize(table, 2, 4, method=method, seed=2**64)
    # numpy ints (say from an array of sizes) are ints.
    assert (
        mf.optimize(table, np.int64(2), np.int32(4), method=method, seed=np.uint8(1)).num_gpus == 2
    )


@pytest.mark.parametrize("limit", [-1.0, float("nan"), 0])
def test_milp_time_limit_must_be_positive(limit):
    # HiGHS ignored an invalid limit and ran without one.
    with pytest.raises(ValueError, match="time_limit must be positive and finite"):
        mf.optimize(skewed_table(5, 8, 2), 2, 4, method="milp", time_limit=limit)


def test_milp_never_returns_worse_than_its_start():
    table = skewed_table(6, 16, 4, tokens=3000)
    start = mf.fill.fill_free_slots(
        np.eye(16, 4, dtype=bool)
        | np.eye(16, 4, k=-4, dtype=bool)
        | np.eye(16, 4, k=-8, dtype=bool)
        | np.eye(16, 4, k=-12, dtype=bool),
        5,
        table.expert_load(),
    )
    with pytest.warns(mf.NotProvenOptimalWarning):
        placement = mf.optimize(table, 4, 5, method="milp", time_limit=0.3)
    result = mf.milp.solve_milp(table, 4, 5, time_limit=0.3, start=start)
    assert result.cost <= mf.expected_cost(table, start) + 1e-12
    assert result.bound <= result.cost
    assert placement.slots_used.tolist() == [5] * 4
