import moefast as mf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.reference import (
    brute_force_cost,
    reference_cost,
    reference_expected_cost,
    reference_table,
)
from support.strategies import placements, random_replicas, topk_arrays


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_costs_equal_the_reference(data):
    topk, num_experts = data.draw(topk_arrays(max_k=8))
    replicas = data.draw(placements(num_experts, max_gpus=12, max_replicas=3))
    table = mf.SubsetTable.from_topk(topk, num_experts=num_experts)
    costs = mf.subset_costs(table, mf.Placement(replicas))
    assert costs.tolist() == [reference_cost(s, replicas) for s in table.subsets.tolist()]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_costs_beyond_64_gpus_equal_the_reference(data):
    topk, num_experts = data.draw(topk_arrays(max_k=8))
    replicas = data.draw(placements(num_experts, max_gpus=300, max_replicas=4))
    # Crowd the experts onto few GPUs as well, so that costs above 1 occur.
    if data.draw(st.booleans()):
        replicas[:, : replicas.shape[1] // 2] = False
        replicas[~replicas.any(axis=1), 0] = True
    table = mf.SubsetTable.from_topk(topk, num_experts=num_experts)
    costs = mf.subset_costs(table, mf.Placement(replicas))
    assert costs.tolist() == [reference_cost(s, replicas) for s in table.subsets.tolist()]


def test_subsets_spanning_more_than_64_gpus():
    # 16 experts with 8 replicas each over 200 GPUs: N(S) exceeds 64 local GPUs.
    rng = np.random.default_rng(1)
    replicas = random_replicas(rng, 16, 200, 8)
    replicas[:, :] = False
    for e in range(16):
        replicas[e, rng.choice(200, size=8, replace=False)] = True
    replicas[:4, :] = False
    replicas[:4, 7] = True  # four experts only on GPU 7: cost 4
    table = mf.SubsetTable.from_subsets([list(range(16))], [1.0], num_experts=16)
    assert mf.subset_costs(table, mf.Placement(replicas)).tolist() == [4]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_tiny_cases_equal_brute_force(data):
    topk, num_experts = data.draw(topk_arrays(max_experts=7, max_k=5, max_tokens=10))
    replicas = data.draw(placements(num_experts, max_gpus=4, max_replicas=2))
    table = mf.SubsetTable.from_topk(topk, num_experts=num_experts)
    costs = mf.subset_costs(table, mf.Placement(replicas))
    assert costs.tolist() == [brute_force_cost(s, replicas) for s in table.subsets.tolist()]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_expected_cost_is_the_weighted_mean(data):
    topk, num_experts = data.draw(topk_arrays(max_k=6))
    if len(topk) == 0:
        return
    replicas = data.draw(placements(num_experts))
    weights = np.random.default_rng(data.draw(st.integers(0, 99))).random(len(topk)) + 0.01
    table = mf.SubsetTable.from_topk(topk, num_experts=num_experts, weights=weights)
    expected = reference_expected_cost(reference_table(topk, weights), replicas)
    assert mf.expected_cost(table, mf.Placement(replicas)) == pytest.approx(expected, rel=1e-12)


def test_known_costs():
    table = mf.SubsetTable.from_subsets([[0, 1], [0, 2], [1, 2]], [1, 1, 1], 3)
    one_gpu = mf.Placement.from_lists([[0], [0], [1]], num_gpus=2)
    assert dict(
        zip(map(tuple, table.subsets.tolist()), mf.subset_costs(table, one_gpu), strict=True)
    ) == {
        (0, 1): 2,
        (0, 2): 1,
        (1, 2): 1,
    }
    replicated = mf.Placement.from_lists([[0], [0, 1], [1]], num_gpus=2)
    assert mf.subset_costs(table, replicated).tolist() == [1, 1, 1]


def test_lower_bound_and_every_placement_meets_it():
    rng = np.random.default_rng(0)
    topk = np.argsort(rng.random((500, 16)), axis=1)[:, :6]
    table = mf.SubsetTable.from_topk(topk, num_experts=16)
    for num_gpus in (1, 2, 4, 8):
        bound = mf.lower_bound(table, num_gpus)
        assert bound == -(-6 // num_gpus)
        replicas = random_replicas(rng, 16, num_gpus, num_gpus)
        assert mf.expected_cost(table, mf.Placement(replicas)) >= bound


def test_bad_cost_arguments():
    table = mf.SubsetTable.from_topk(np.array([[0, 1]]), num_experts=3)
    with pytest.raises(ValueError, match="the table has 3 experts but the placement has 2"):
        mf.subset_costs(table, mf.Placement.from_lists([[0], [1]], num_gpus=2))
    with pytest.raises(ValueError, match="the table has 3 experts but the placement has 2"):
        mf.expected_cost(table, mf.Placement.from_lists([[0], [1]], num_gpus=2))
    empty = mf.SubsetTable.from_topk(np.zeros((0, 2), dtype=int), num_experts=3)
    with pytest.raises(ValueError, match="empty"):
        mf.expected_cost(empty, mf.Placement.from_lists([[0], [1], [0]], num_gpus=2))
    with pytest.raises(ValueError, match="num_gpus must be at least 1"):
        mf.lower_bound(table, 0)
    with pytest.raises(TypeError):
        mf.subset_costs(table, np.ones((3, 2), dtype=bool))
