"""Re-planning with a price per copy: what a realistic price buys.

    pytest benches/bench_replan_price.py -s

The DeepSeek-V3-size layer and the "request mix" shift of `bench_replan` (256 experts,
4 nodes x 8 GPUs, 9 slots; 20,000 tokens plan, 20,000 held out score). A copy of a 44 MB
FP8 expert over 50 GB/s takes 880 us; re-planned every T tokens, it costs
`price_per_copy(44e6, 50, T)` expert rounds per token (1.87e-5 at T = 1M). Decode with
the h800_normal topology: the node-aware walk from the served node-aware plan, a copy
priced that x 47 us per token (or by link, `Topology.copy_price`); batches (B = 64, no
topology): the batch walk, a copy priced that x 47 us x 64 tokens of step time. Copies,
held-out gain, and net gain (gain less the copies' price, per token or per step).
CPU seconds of this process.
"""

from __future__ import annotations

import time

import moefast as mf
from bench_replan import held_batch_time, traces
from bench_topology import COST, SLOTS, E, G
from moefast.moves import check_copy_cost, copies, copies_price, price_per_copy
from moefast.search.batch import optimize_batch
from moefast.search.node_plan import node_aware_decode, replan_node_aware
from moefast.topology.times import Topology, expected_time

TOPO = Topology.preset("h800_normal", gpus_per_node=8)
ROUND_US, B = 47.0, 64
EXPERT_BYTES, BANDWIDTH = 44e6, 50.0
TOKENS = (1e6, 1e5, 1e4)


def test_decode_with_a_topology():
    served_ids, plan_ids, held_ids = traces("request mix")
    before = mf.SubsetTable.from_topk(served_ids, num_experts=E).prune(coverage=0.9)
    after = mf.SubsetTable.from_topk(plan_ids, num_experts=E).prune(coverage=0.9)
    held = mf.SubsetTable.from_topk(held_ids, num_experts=E)
    served = mf.optimize(before, mf.Cluster(G, SLOTS, topology=TOPO))
    fresh = mf.optimize(after, G, SLOTS)
    full = node_aware_decode(after, [fresh], SLOTS, topology=TOPO, round_us=ROUND_US, seed=0)
    stale = expected_time(held, served, TOPO)
    print(
        f"\ndecode, h800_normal: served {stale:.3f} us per token held out, full node-aware"
        f" re-plan {expected_time(held, full, TOPO):.3f} ({copies(served, full)} copies)"
    )
    print("| price | copies | held-out us per token | gain | price of the copies | CPU s |")
    print("| --- | --- | --- | --- | --- | --- |")
    prices = [("none", None)]
    for t in TOKENS:
        prices.append((f"50 GB/s, T = {t:.0e}", price_per_copy(EXPERT_BYTES, BANDWIDTH, t)))
    prices.append(("by link, T = 1e+04", TOPO.copy_price(EXPERT_BYTES, 1e4)))
    for label, price in prices:
        t0 = time.process_time()
        r = replan_node_aware(
            after,
            served,
            fresh,
            SLOTS,
            topology=TOPO,
            round_us=ROUND_US,
            max_moves=None,
            seed=0,
            full=full,
            copy_cost=price,
        )
        cpu = time.process_time() - t0
        now = expected_time(held, r.placement, TOPO)
        paid = ROUND_US * copies_price(served, r.placement, check_copy_cost(price), 8)
        assert now <= stale + 1e-6
        print(f"| {label} | {r.copies} | {now:.3f} | {stale - now:.3f} | {paid:.4f} | {cpu:.1f} |")


def test_batches_without_a_topology():
    served_ids, plan_ids, held_ids = traces("request mix")
    before = mf.SubsetTable.from_topk(served_ids, num_experts=E).prune(coverage=0.9)
    after = mf.SubsetTable.from_topk(plan_ids, num_experts=E).prune(coverage=0.9)
    served = mf.optimize(before, G, SLOTS)
    stale = held_batch_time(held_ids, served, B)
    print(f"\nbatches, B = {B}: served {stale:.2f} us per step (48 held-out batches)")
    print("| price | copies | held-out us per step | gain | price of the copies | CPU s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in (None, *TOKENS):
        price = None if t is None else price_per_copy(EXPERT_BYTES, BANDWIDTH, t)
        t0 = time.process_time()
        p = optimize_batch(
            after,
            served,
            SLOTS,
            COST,
            B,
            max_moves=G * SLOTS if t is None else None,
            copy_cost=price,
        )
        cpu = time.process_time() - t0
        now = held_batch_time(held_ids, p, B)
        n = copies(served, p)
        paid = 0.0 if price is None else price * ROUND_US * B * n
        label = "none" if t is None else f"50 GB/s, T = {t:.0e}"
        print(f"| {label} | {n} | {now:.2f} | {stale - now:.2f} | {paid:.3f} | {cpu:.1f} |")
