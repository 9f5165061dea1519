"""Decode re-planning with few moves after shifts measured in serving.

    pytest benches/bench_replan_loads.py -s

`bench_replan.py` shifts a synthetic router's request mix or redraws the router. Here the
shifts are the per-layer expert loads SGLang published for DeepSeek-V3 under different
workloads (../shared/data/deepseek_v3_sglang_expert_distribution, 256 experts, top-8): a
placement planned for one workload's load is re-planned for another's. Per-token traces
with those loads come from `moefast.synthetic_trace(expert_load=)` (one router per layer,
its per-expert bias fitted to the load: co-activation is the generator's, the load is
measured). Served: `decode_in1000out1000`. Shifts: to `decode_in1800out100` (longer prompts,
short answers: total variation of the load about 0.10), to `prefill_in1024` (prefill tokens:
about 0.30), to `decode_in500out1500` (about 0.02: hardly a shift).

Per layer, 32 GPUs x 9 slots (288 slots): the served plan is made on 20,000 tokens of the
served workload; after the shift, 20,000 tokens plan (the full re-plan and `moefast.moves`
with at most 14 and 29 copies, 5% and 10% of the slots) and 60,000 others score (held out).
The share of the gain is summed over the layers (the model's time is their sum): (served -
re-plan) / (served - full re-plan), held out, in-sample in brackets. A layer where the full
re-plan is not faster than the served plan held out has no gain to recover; where the full
re-plan gains under 0.001 rounds per layer the gains are printed instead of shares.
"""

from __future__ import annotations

import json
import time

import moefast as mf
import numpy as np
import pytest
from moefast.io.synthetic import synthetic_trace
from moefast.search.replan import replan
from support.shared_data import SHARED_DATA

LOADS = SHARED_DATA / "deepseek_v3_sglang_expert_distribution"
E, K, G, SLOTS = 256, 8, 32, 9
LAYERS = (5, 14, 23, 32, 41, 50)  # MoE layers spread over the model (3-60)
SERVED = "decode_in1000out1000"
SHIFTS = ("decode_in1800out100", "prefill_in1024", "decode_in500out1500")
BUDGETS = (14, 29)
PLAN, HELD = 20_000, 60_000


def loads(name: str) -> np.ndarray:
    return np.array(json.loads((LOADS / f"{name}.json").read_text())["logical_count"], float)[
        list(LAYERS)
    ]


def tokens(name: str) -> np.ndarray:
    """Ids [tokens, layers, k] with the workload's per-layer load. The same seed draws the
    same routers (popularity and topic logits per layer) for every workload; the load fit
    adds a per-expert bias. Served and shifted traces use different tokens of the draw."""
    trace = synthetic_trace(PLAN + PLAN + HELD, E, K, len(LAYERS), seed=3, expert_load=loads(name))
    return trace.topk


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        np.mean(0.5 * np.abs(a / a.sum(1, keepdims=True) - b / b.sum(1, keepdims=True)).sum(1))
    )


def test_replanning_after_shifts_between_serving_loads():
    if not LOADS.exists():
        pytest.skip("needs ../shared/data (the DeepSeek-V3 SGLang statistics have no licence)")
    served_ids = tokens(SERVED)[:PLAN]
    print(f"\nserved: {SERVED}; layers {', '.join(map(str, LAYERS))}; held-out rounds per token")
    print(
        "| shift (load TV) | layer | served | full re-plan | 14 copies | 29 copies | CPU s (29) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for shift in SHIFTS:
        ids = tokens(shift)
        tv = total_variation(loads(SERVED), loads(shift))
        sums = np.zeros(2 + len(BUDGETS))  # held out: served, full, budgets
        sums_in = np.zeros(2 + len(BUDGETS))
        for i, layer in enumerate(LAYERS):
            before = mf.SubsetTable.from_topk(served_ids[:, i], num_experts=E).prune(coverage=0.9)
            after = mf.SubsetTable.from_topk(ids[PLAN : 2 * PLAN, i], num_experts=E)
            after = after.prune(coverage=0.9)
            held = mf.SubsetTable.from_topk(ids[2 * PLAN :, i], num_experts=E)
            served = mf.optimize(before, G, SLOTS)
            full = mf.optimize(after, G, SLOTS)
            placements = [served, full]
            cpu = 0.0
            for m in BUDGETS:
                t0 = time.process_time()
                r = replan(after, served, SLOTS, target=full, max_moves=m)
                cpu = time.process_time() - t0
                assert r.copies <= m
                placements.append(r.placement)
            costs = np.array([mf.expected_cost(held, p) for p in placements])
            costs_in = np.array([mf.expected_cost(after, p) for p in placements])
            # A re-plan never costs more than the served plan on the tokens it plans on.
            assert np.all(costs_in[2:] <= costs_in[0] + 1e-12), (shift, layer)
            sums += costs
            sums_in += costs_in
            cells = " | ".join(f"{c:.4f}" for c in costs)
            print(f"| {shift} ({tv:.2f}) | {layer} | {cells} | {cpu:.1f} |")
        gain, gain_in = sums[0] - sums[1], sums_in[0] - sums_in[1]
        shares = {
            m: ((sums[0] - sums[2 + j]) / gain, (sums_in[0] - sums_in[2 + j]) / gain_in)
            for j, m in enumerate(BUDGETS)
        }
        gains = {m: (sums[0] - sums[2 + j]) / len(LAYERS) for j, m in enumerate(BUDGETS)}
        summary[shift] = (gain / len(LAYERS), gains, shares)
    print("\nsummed over the layers, held out (in-sample share in brackets):")
    for shift, (gain, gains, shares) in summary.items():
        if gain < 1e-3:  # the full re-plan gains under 0.1% held out: no share to speak of
            parts = ", ".join(f"{m} copies gain {g:.4f}" for m, g in gains.items())
            print(f"  {shift}: the full re-plan gains {gain:.4f} rounds per layer; {parts}")
            continue
        parts = ", ".join(f"{m} copies {h:.0%} ({s:.0%})" for m, (h, s) in shares.items())
        print(f"  {shift}: the full re-plan gains {gain:.4f} rounds per layer; {parts}")
