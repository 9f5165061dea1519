"""The batch dispatch runs a batch in the step time `batch_time` reports, with every token
on a replica of its expert."""

from __future__ import annotations

import moefast as mf
import numpy as np
import pytest
from moefast.dispatch import ReplicaTable, replica_shares, route
from moefast.io.engines.slots import gpu_slots
from support.optional import require
from support.workloads import distinct_v3_topk, skewed_topk


def step_time(physical: np.ndarray, slots_per_gpu: int, num_gpus: int, cm: mf.CostModel) -> float:
    """A plain reference: per GPU, the sum over its slots of f(tokens sent there)."""
    gpus = np.arange(num_gpus * slots_per_gpu) // slots_per_gpu
    counts = np.bincount(np.asarray(physical).ravel(), minlength=gpus.size)
    # Slots of one expert on one GPU would run it once; moefast's maps hold none.
    return float(np.bincount(gpus, weights=cm.expert_time(counts), minlength=num_gpus).max())


@pytest.mark.parametrize("method", ["greedy", "eplb"])
def test_step_time_equals_batch_time(method: str) -> None:
    rng = np.random.default_rng(4)
    cm = mf.CostModel.preset("deepseek-v3")
    pool = distinct_v3_topk(4000, seed=6).astype(np.int64)
    placement = mf.optimize(mf.SubsetTable.from_topk(pool, num_experts=256), 32, 9, method=method)
    table = ReplicaTable.from_placement(placement, 9)
    for b in (2, 16, 64, 256, 1024):
        topk = pool[rng.choice(len(pool), size=b, replace=False)]
        out = route(topk, table, cost_model=cm)
        assert (gpu_slots(placement, 9).ravel()[out] == topk).all()
        want = mf.batch_time(topk, placement, cm)
        assert step_time(out, 9, 32, cm) == pytest.approx(want, rel=1e-9)


def test_shares_cover_every_token_on_its_replicas() -> None:
    topk = skewed_topk(500, 64, 6, seed=1).astype(np.int64)
    placement = mf.optimize(mf.SubsetTable.from_topk(topk, num_experts=64), 8, 10, method="eplb")
    table = ReplicaTable.from_placement(placement, 10)
    counts = np.bincount(topk.ravel(), minlength=64)
    shares = replica_shares(counts, table, mf.CostModel(20.0, 1.0))
    np.testing.assert_array_equal(shares.sum(1), counts)
    past = np.arange(shares.shape[1])[None, :] >= table.count[:, None]
    assert (shares[past] == 0).all()


def test_one_token_takes_the_per_token_rule() -> None:
    slots = np.array([0, 2, 0, 3, 1, 4])
    table = ReplicaTable(slots, 3)
    one = np.array([[0, 2]])
    np.testing.assert_array_equal(
        route(one, table, cost_model=mf.CostModel(1.0, 1.0)), route(one, table)
    )


def test_torch_batch_gives_the_numpy_result() -> None:
    torch = require("torch")
    topk = skewed_topk(256, 64, 6, seed=3).astype(np.int64)
    placement = mf.optimize(mf.SubsetTable.from_topk(topk, num_experts=64), 8, 10, method="eplb")
    table = ReplicaTable.from_placement(placement, 10)
    cm = mf.CostModel(30.0, 0.5, p=1.4)
    out = route(torch.as_tensor(topk), table, cost_model=cm)
    np.testing.assert_array_equal(out.numpy(), route(topk, table, cost_model=cm))
