"""Re-planning with few moves after a workload shift (issue 14).

    pytest benches/bench_replan.py -s

The DeepSeek-V3-size layer of `bench_topology` (256 experts, top-8 with 4 of 8 groups per
token; 4 nodes x 8 GPUs, 9 slots: 288 slots), compute-only decode cost in expert rounds.
A plan for one trace is re-planned for another with at most m copies (5%, 10%, 20% of the
slots): `moefast.replan` (the relabelled full re-plan and the walk by exact gain per
copy) beside the node-aware search's sampled moves toward the full re-plan
(`moefast.topology.place`, the previous re-planner) at 10% of the slots, in the same
run. Reported: the share of the full re-plan's gain recovered, and CPU seconds of this
process.
"""

from __future__ import annotations

import time

import moefast as mf
from bench_topology import SLOTS, E, G, group_limited_topk
from moefast.replan import copies, relabel, replan
from moefast.topology import place

BUDGETS = (14, 29, 58)  # 5%, 10%, 20% of the 288 slots


def shift(name: str, before_topk, after_topk) -> dict[int, float]:
    before = mf.SubsetTable.from_topk(before_topk, num_experts=E).prune(coverage=0.9)
    after = mf.SubsetTable.from_topk(after_topk, num_experts=E).prune(coverage=0.9)
    served = mf.optimize(before, G, SLOTS)
    full = mf.optimize(after, G, SLOTS)
    stale, fresh = mf.expected_cost(after, served), mf.expected_cost(after, full)
    gain = stale - fresh
    print(
        f"\n{name}: served plan {stale:.4f} rounds on the new trace, full re-plan {fresh:.4f};"
        f" the full re-plan copies {copies(served, full)} replicas,"
        f" {copies(served, relabel(served, full))} once its GPUs are relabelled"
    )
    print(
        "| max_moves | share of slots | moefast.replan: rounds, share of gain, CPU s |"
        " place (sampled): rounds, share of gain, CPU s |"
    )
    print("| --- | --- | --- | --- |")
    shares = {}
    for m in BUDGETS:
        t0 = time.process_time()
        r = replan(after, served, SLOTS, target=full, max_moves=m)
        ours_s = time.process_time() - t0
        assert r.copies <= m and copies(served, r.placement) == r.copies
        assert abs(mf.expected_cost(after, r.placement) - r.cost) < 1e-9
        shares[m] = (stale - r.cost) / gain
        sampled = ""
        if m == 29:  # the sampled search is slow: at 10% of the slots only
            t0 = time.process_time()
            p, moved = place(after, served, SLOTS, max_moves=m, max_evaluations=8_000, target=full)
            theirs_s = time.process_time() - t0
            assert moved <= m
            theirs = mf.expected_cost(after, p)
            sampled = f"{theirs:.4f}, {(stale - theirs) / gain:.0%}, {theirs_s:.1f}"
        print(
            f"| {m} | {m / (G * SLOTS):.0%} | {r.cost:.4f}, {shares[m]:.0%}, {ours_s:.1f} |"
            f" {sampled} |"
        )
    return shares


def test_replanning_with_few_moves_after_a_shift():
    # The same router, another mix of requests (topics in another order of popularity).
    mix = shift(
        "request-mix shift",
        group_limited_topk(20_000, seed=1),
        group_limited_topk(20_000, seed=1, mix_seed=5),
    )
    # Another router altogether (every expert's popularity and partners redrawn).
    other = shift(
        "router redrawn",
        group_limited_topk(20_000, seed=1),
        group_limited_topk(20_000, seed=2),
    )
    print(f"\n10% of the slots: {mix[29]:.0%} (request mix), {other[29]:.0%} (router redrawn)")
    # More moves never recover less (each run is a walk of its own, so this can fail).
    assert 0 < mix[14] <= mix[29] <= mix[58] and 0 < other[29] <= other[58]
