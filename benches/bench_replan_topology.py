"""Re-planning for batches with communication after a workload shift.

    pytest benches/bench_replan_topology.py -s

The DeepSeek-V3-size layer of `bench_topology` (256 experts, top-8 with 4 of 8 groups per
token) on 4 nodes x 8 GPUs x 9 slots (288 slots), DeepEP's H800 normal-kernel topology,
DeepSeek-V3 expert times (docs/cost-model.md#a-batch). The "request mix" shift of
`bench_replan`: the
served placement is the node-aware batch plan (`optimize(objective="batch",
topology=)`) for 20,000 tokens of one mix; of 40,000 tokens of another mix, the first
half plans (the full node-aware batch re-plan, and the re-plan from the served placement
with at most 29 copies, 10% of the slots) and the second half scores: mean modeled step
time (us, with communication: `moefast.topology.times.batch_time`) of the 20,000 held-out
tokens in disjoint batches of B (312 at B = 64, 78 at B = 256). CPU seconds of this
process: the full re-plan, and the budgeted re-plan given it
(`moefast.search.node_plan.replan_node_aware_batch`, what `optimize(objective="batch",
topology=, current=, max_moves=)` runs after the full plan).
"""

from __future__ import annotations

import time

import moefast as mf
import numpy as np
from bench_topology import COST, SLOTS, E, G, group_limited_topk
from moefast.moves import copies
from moefast.search.node_plan import replan_node_aware_batch
from moefast.topology.times import Topology, batch_time

TENTH = 29  # 10% of the 288 slots
TOPOLOGY = Topology.preset("h800_normal")


def held_batch_time(held_ids: np.ndarray, placement: mf.Placement, b: int) -> float:
    """Mean modeled step time (us, with communication) of the held-out tokens shuffled
    (seed 7) into disjoint batches of `b`: every held-out token once, the same batches
    for every placement (48 drawn batches, as bench_replan scores, moved the walk's
    share by 20 points between two draws at B = 64)."""
    order = np.random.default_rng(7).permutation(len(held_ids))
    batches = [held_ids[order[i : i + b]] for i in range(0, len(order) - b + 1, b)]
    return float(np.mean([batch_time(d, placement, TOPOLOGY, COST)[0] for d in batches]))


def test_batch_replanning_with_a_topology_after_a_shift():
    served_ids = group_limited_topk(20_000, seed=1)
    shifted = group_limited_topk(40_000, seed=1, mix_seed=5)
    plan_ids, held_ids = shifted[:20_000], shifted[20_000:]
    before = mf.SubsetTable.from_topk(served_ids, num_experts=E).prune(coverage=0.9)
    after = mf.SubsetTable.from_topk(plan_ids, num_experts=E).prune(coverage=0.9)
    print(
        f"\nrequest mix, batches with communication: held-out mean step time (us), re-plan at"
        f" {TENTH} copies"
    )
    print(
        "| B | served | full node-aware re-plan: time, copies (relabelled), CPU s |"
        f" re-plan, {TENTH} copies: time, share of gain, copies, CPU s |"
        " on the search's sample: served, re-plan, full (share) |"
    )
    print("| --- | --- | --- | --- | --- |")
    shares = {}
    for b in (64, 256):
        goal = mf.Objective("batch", b, COST)
        cluster = mf.Cluster(G, SLOTS, topology=TOPOLOGY)
        served = mf.optimize(before, cluster, objective=goal)
        t0 = time.process_time()
        full = mf.optimize(after, cluster, objective=goal)
        full_s = time.process_time() - t0
        t0 = time.process_time()
        r = replan_node_aware_batch(
            after,
            served,
            full,
            SLOTS,
            topology=TOPOLOGY,
            cost_model=COST,
            batch_size=b,
            num_batches=None,
            max_moves=TENTH,
            seed=0,
        )
        ours_s = time.process_time() - t0
        assert r.copies == copies(served, r.placement) <= TENTH
        assert r.cost <= r.stale_cost
        stale, fresh = held_batch_time(held_ids, served, b), held_batch_time(held_ids, full, b)
        ours = held_batch_time(held_ids, r.placement, b)
        shares[b] = (stale - ours) / (stale - fresh)
        assert r.full_cost is not None
        in_sample = (r.stale_cost - r.cost) / (r.stale_cost - r.full_cost)
        print(
            f"| {b} | {stale:.1f} | {fresh:.1f}, {r.full_copies}, {full_s:.1f} |"
            f" {ours:.1f}, {shares[b]:.0%}, {r.copies}, {ours_s:.1f} |"
            f" {r.stale_cost:.1f}, {r.cost:.1f}, {r.full_cost:.1f} ({in_sample:.0%}) |"
        )
        steps = ", ".join(f"{c}: {t:.1f}" for c, t in r.path[:: max(1, len(r.path) // 8)])
        print(f"B = {b}: walk path (copies: sample mean us) {steps}, last {r.path[-1]}")
    for b, s in shares.items():
        assert s > 0, b
