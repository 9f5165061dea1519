"""The per-token dispatch against the core's semi-matching and brute force: every token's
busiest GPU is the least any choice of replicas gives."""

from __future__ import annotations

import moefast as mf
import numpy as np
import pytest
from moefast.dispatch import ENUMERATION_LIMIT, ReplicaTable, route
from moefast.io.engines.slots import gpu_slots, placement_from_slots
from support.optional import require
from support.reference import brute_force_cost
from support.workloads import distinct_v3_topk, skewed_topk


def busiest(physical: np.ndarray, slots_per_gpu: int) -> np.ndarray:
    """Most experts of each token on one GPU, from the physical slots chosen."""
    gpus = np.asarray(physical) // slots_per_gpu
    return (gpus[:, :, None] == gpus[:, None, :]).sum(2).max(1)


def core_costs(topk: np.ndarray, placement: mf.Placement) -> np.ndarray:
    """The core's semi-matching cost of each token's subset."""
    rows = np.sort(topk, axis=1)
    unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    table = mf.SubsetTable.from_subsets(
        unique.tolist(), np.ones(len(unique)), num_experts=placement.num_experts
    )
    costs = np.asarray(mf.subset_costs(table, placement))
    position = {tuple(r): i for i, r in enumerate(np.sort(np.asarray(table.subsets), axis=1))}
    return costs[[position[tuple(r)] for r in unique]][inverse.ravel()]


def check_exact(topk: np.ndarray, placement: mf.Placement, slots_per_gpu: int) -> None:
    table = ReplicaTable.from_placement(placement, slots_per_gpu)
    out = route(topk, table)
    assert (gpu_slots(placement, slots_per_gpu).ravel()[out] == topk).all()
    np.testing.assert_array_equal(busiest(out, slots_per_gpu), core_costs(topk, placement))


@pytest.mark.slow
def test_exact_on_100000_v3_tokens() -> None:
    topk = distinct_v3_topk(100_000, seed=3).astype(np.int64)
    train = mf.SubsetTable.from_topk(distinct_v3_topk(20_000, seed=4), num_experts=256)
    for method in ("greedy", "eplb"):
        check_exact(topk, mf.optimize(train, 32, 9, method=method), 9)


def test_exact_on_skewed_e64_tokens() -> None:
    topk = skewed_topk(4000, 64, 6, seed=2).astype(np.int64)
    train = mf.SubsetTable.from_topk(skewed_topk(4000, 64, 6, seed=1), num_experts=64)
    for slots, method in ((9, "greedy"), (10, "eplb"), (12, "greedy")):
        check_exact(topk, mf.optimize(train, 8, slots, method=method), slots)


def test_equals_brute_force_on_random_maps() -> None:
    # Engine maps with replicas on up to all GPUs and repeated slots on one GPU.
    rng = np.random.default_rng(11)
    experts, gpus, per_gpu, k = 10, 5, 4, 4
    for _ in range(30):
        slots = rng.integers(0, experts, size=(gpus, per_gpu))
        slots.ravel()[rng.permutation(gpus * per_gpu)[:experts]] = np.arange(experts)
        placement = placement_from_slots(slots.ravel(), gpus, experts, "test")
        table = ReplicaTable(slots.ravel(), gpus)
        topk = np.array([rng.choice(experts, size=k, replace=False) for _ in range(40)])
        out = route(topk, table)
        assert (slots.ravel()[out] == topk).all()
        want = [brute_force_cost(row, placement.replicas) for row in topk]
        np.testing.assert_array_equal(busiest(out, per_gpu), want)


def test_beyond_the_enumeration_limit_routes_one_by_one() -> None:
    # Every expert on all 16 GPUs: 16^4 combinations per token, past the limit.
    assert ENUMERATION_LIMIT < 16**4
    slots = np.tile(np.arange(8), 16)
    table = ReplicaTable(slots, 16)
    topk = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [0, 2, 4, 6]])
    out = route(topk, table)
    assert (slots[out] == topk).all()
    np.testing.assert_array_equal(busiest(out, 8), [1, 1, 1])


def test_prefers_the_source_gpu_among_equal_choices() -> None:
    # Expert 0 on GPUs 0 and 1, expert 1 on GPU 2: both replicas of 0 give one round.
    slots = np.array([0, 2, 0, 3, 1, 4])
    for rank, gpu in ((0, 0), (1, 1), (2, 0)):
        out = route(np.array([[0, 1]]), ReplicaTable(slots, 3, rank=rank))
        assert out[0, 0] // 2 == gpu


def test_torch_gives_the_numpy_result() -> None:
    torch = require("torch")
    topk = skewed_topk(2000, 64, 6, seed=5).astype(np.int64)
    train = mf.SubsetTable.from_topk(topk, num_experts=64)
    table = ReplicaTable.from_placement(mf.optimize(train, 8, 10, method="eplb"), 10)
    ids = torch.as_tensor(topk, dtype=torch.int32)
    out = route(ids, table)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32
    np.testing.assert_array_equal(out.numpy(), route(topk, table))
