"""Placements searched under an engine's dispatch rule (`moefast.search.dispatch`) and the
dispatch options of `simulate` and `token_costs`."""

from __future__ import annotations

import moefast as mf
import numpy as np
import pytest
from moefast.batch.cost_model import CostModel
from moefast.batch.times import simulate
from moefast.evaluate.scoring import token_costs
from moefast.search.dispatch import dispatch_cost, search_for_dispatch
from support.workloads import skewed_topk

# Expert 2 on both GPUs; 0 and 1 on GPU 0; 3 on GPU 1.
PLACEMENT = mf.Placement.from_lists([[0], [0], [0, 1], [1]], num_gpus=2)
TABLE = mf.SubsetTable.from_subsets([[0, 2], [1, 3]], [3.0, 1.0], num_experts=4)


def test_dispatch_cost_of_a_small_case():
    # {0, 2}: one round at best; under SGLang's static map rank 0 keeps expert 2 local (2
    # rounds) and rank 1 uses GPU 1 (1 round); dynamic draws either replica.
    assert dispatch_cost(TABLE, PLACEMENT, "best") == 1.0
    assert dispatch_cost(TABLE, PLACEMENT, "sglang-static") == pytest.approx(1.375)
    assert dispatch_cost(TABLE, PLACEMENT, "sglang-dynamic") == pytest.approx(1.375)
    assert dispatch_cost(TABLE, PLACEMENT, "trtllm") == pytest.approx(1.375)
    with pytest.raises(ValueError, match="unknown dispatch"):
        dispatch_cost(TABLE, PLACEMENT, "round-robin")


def test_token_costs_and_simulate_take_the_dispatch():
    topk = np.array([[0, 2], [2, 0], [1, 3]])
    costs = token_costs(topk, 4, [PLACEMENT], "sglang-static")
    assert costs.tolist() == [[1.5, 1.5, 1.0]]
    assert token_costs(topk, 4, [PLACEMENT]).tolist() == [[1.0, 1.0, 1.0]]
    cm = CostModel(100.0, 1.0)
    best = simulate(topk, PLACEMENT, [1, 4], cm, steps=100)
    static = simulate(topk, PLACEMENT, [1, 4], cm, steps=100, dispatch="sglang-static")
    for b, s in zip(best, static, strict=True):
        assert s["mean_step_time"] >= b["mean_step_time"] - 1e-9
    # TensorRT-LLM's round robin at more tokens than ranks: never below the best choice.
    (trt,) = simulate(topk, PLACEMENT, [4], cm, steps=100, dispatch="trtllm")
    assert trt["mean_step_time"] >= best[1]["mean_step_time"] - 1e-9


def test_search_never_ends_above_its_best_candidate():
    topk = skewed_topk(1500, 16, 4, seed=2)
    table = mf.SubsetTable.from_topk(topk, num_experts=16)
    candidates = {m: mf.optimize(table, 4, 5, method=m) for m in ("greedy", "eplb", "contiguous")}
    found = search_for_dispatch(table, candidates, "sglang-static", max_evaluations=15, seed=1)
    costs = {m: dispatch_cost(table, p, "sglang-static") for m, p in candidates.items()}
    assert found.start == min(costs, key=lambda m: costs[m])
    assert found.start_cost == pytest.approx(costs[found.start])
    assert found.cost <= found.start_cost + 1e-12
    assert found.cost == pytest.approx(dispatch_cost(table, found.placement, "sglang-static"))
    # Swaps keep every GPU's slot count.
    assert (found.placement.slots_used == candidates[found.start].slots_used).all()
    again = search_for_dispatch(table, candidates, "sglang-static", max_evaluations=15, seed=1)
    assert (again.placement.replicas == found.placement.replicas).all()
    with pytest.raises(ValueError, match="cost_model"):
        search_for_dispatch(table, candidates, "sglang-static", batch_size=8)
    batch = search_for_dispatch(
        table,
        candidates,
        "sglang-dynamic",
        max_evaluations=3,
        batch_size=8,
        cost_model=CostModel(50.0, 1.0),
    )
    assert batch.cost <= batch.start_cost
