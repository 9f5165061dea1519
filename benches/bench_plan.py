"""A whole DeepSeek-V3-scale model planned at once:

    pytest benches/bench_plan.py -s

58 MoE layers, 256 experts, top-8, 200,000 tokens per layer, 32 GPUs x 9 slots. Target: `plan`
(tables, pruning to 99%, greedy per layer, evaluation on the full tables) in <= 60 s on 2 cores.
"""

from __future__ import annotations

import moefast as mf
import numpy as np
from support.workloads import skewed_topk

LAYERS, EXPERTS, K, TOKENS, GPUS, SLOTS = 58, 256, 8, 200_000, 32, 9


def deepseek_v3_trace() -> mf.Trace:
    """Layers share one skewed, correlated routing with the experts relabelled per layer, so
    every layer has its own hot experts and groups at the cost of generating one."""
    base = skewed_topk(TOKENS, EXPERTS, K, seed=7)
    rng = np.random.default_rng(8)
    topk = np.stack([rng.permutation(EXPERTS)[base] for _ in range(LAYERS)], axis=1).astype(
        np.int16
    )
    return mf.Trace(topk, EXPERTS, list(range(3, 3 + LAYERS)))


def test_plan_deepseek_v3_model(benchmark):
    trace = deepseek_v3_trace()
    model = benchmark.pedantic(
        mf.plan, args=(trace, GPUS, SLOTS), kwargs={"progress": True}, rounds=1, iterations=1
    )
    seconds = benchmark.stats.stats.median
    table = mf.SubsetTable.from_topk(trace.topk[:, 0, :], EXPERTS)
    eplb = mf.expected_cost(
        table, mf.optimize(table.prune(coverage=0.99), GPUS, SLOTS, method="eplb")
    )
    print(
        f"\nplan: {LAYERS} layers x {TOKENS:,} tokens, E={EXPERTS} k={K},"
        f" {GPUS} GPUs x {SLOTS} slots:"
        f" {seconds:.1f} s; model cost {model.expected_cost:.2f} rounds/token (lower bound"
        f" {model.lower_bounds.sum():.0f}); layer 0 greedy {model.layer_costs[0]:.4f}"
        f" vs EPLB {eplb:.4f}"
    )
    assert len(model) == LAYERS and model.layer_ids[0] == 3
    assert all(p.slots_used.tolist() == [SLOTS] * GPUS for p in model)
    assert model.layer_costs[0] < eplb
    assert seconds <= 60
