"""How far from optimal, and what more time buys: per layer, the greedy (three seeds), the
anytime search at each time budget, the best lower bound and the gap.

    pytest benches/bench_anytime.py -s
    MOEFAST_BUDGETS=2,10 pytest benches/bench_anytime.py -s     (shorter budgets)

Layers: DeepSeek-V3 size (`tests/workloads.distinct_v3_topk`, 200,000 tokens, 256 experts,
top-8, 32 GPUs x 9 slots) and 64 experts, top-6 (`skewed_topk`, 200,000 tokens) on 8 GPUs x
9 and x 10 slots. The bound is the collision bound (`moefast.lower_bound` with the slots);
the MILP does not solve these sizes. The time budgets default to 10 s and 60 s.
"""

from __future__ import annotations

import os
import time

import moefast as mf
import pytest
from support.workloads import distinct_v3_topk, skewed_topk

BUDGETS = [float(b) for b in os.environ.get("MOEFAST_BUDGETS", "10,60").split(",")]
CASES = {
    "V3 E256 k8 G32x9": (lambda: mf.SubsetTable.from_topk(distinct_v3_topk(200_000), 256), 32, 9),
    "E64 k6 G8x9": (lambda: mf.SubsetTable.from_topk(skewed_topk(200_000, 64, 6), 64), 8, 9),
    "E64 k6 G8x10": (lambda: mf.SubsetTable.from_topk(skewed_topk(200_000, 64, 6), 64), 8, 10),
}


@pytest.mark.parametrize("name", list(CASES))
def test_anytime_curve_and_gap(name):
    make, gpus, slots = CASES[name]
    table = make()
    bound = mf.lower_bound(table, gpus, slots)
    seeds = []
    for seed in range(3):
        start = time.perf_counter()
        cost = mf.expected_cost(table, mf.optimize(table, gpus, slots, seed=seed))
        seeds.append((cost, time.perf_counter() - start))
    curve = []
    for budget in BUDGETS:
        start = time.perf_counter()
        placement = mf.optimize(table, gpus, slots, budget=mf.Budget(time_budget=budget))
        curve.append((budget, time.perf_counter() - start, mf.expected_cost(table, placement)))
    eplb = mf.expected_cost(table, mf.optimize(table, gpus, slots, method="eplb"))
    best = min(c for _, _, c in curve)
    print(
        f"\n{name}: bound {bound:.4f}, EPLB {eplb:.4f}; greedy seeds 0-2 "
        + ", ".join(f"{c:.4f} ({s:.1f} s)" for c, s in seeds)
    )
    for budget, wall, cost in curve:
        print(
            f"  time_budget {budget:g} s: {cost:.4f} in {wall:.1f} s,"
            f" {100 * (1 - cost / seeds[0][0]):.2f}% below the greedy (seed 0),"
            f" gap to the bound {100 * (cost / bound - 1):.1f}%"
        )
    assert bound <= best <= seeds[0][0]
