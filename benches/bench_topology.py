"""Placement with communication (re-planning with few moves: bench_replan.py).

    pytest benches/bench_topology.py -s
    pytest benches/bench_topology.py -s -k grouped      # the grouped decode search
    pytest benches/bench_topology.py -s -k cli          # moefast plan --topology, 4 V3 layers

A DeepSeek-V3-size layer (256 experts, top-8 of 8 groups with top-4 groups per token) on
4 nodes x 8 GPUs with 9 slots each, DeepEP's H800 normal-kernel topology. 60,000 tokens of
one synthetic router: the first 30,000 plan, the last 30,000 score (held out). Modeled
layer time of the node-aware placement (B = 1: `optimize(topology=)`; B = 64, 256:
`place_batch` from the best of the compute-only greedy, EPLB hierarchical, the compute-only
batch search and the grouped search) against DeepSeek's EPLB (hierarchical, global),
moefast's compute-only greedy and compute-only batch search (`optimize_batch`), and the
node-aware search that keeps each group on one node (from EPLB hierarchical). B = 1: exact
mean over the held-out table; B = 64, 256: mean achievable time of 48 held-out batches.
"""

from __future__ import annotations

import resource
import time

import moefast as mf
import numpy as np
from moefast.cli import main
from moefast.eplb import rebalance_experts
from moefast.io.engines import placement_from_slots
from moefast.search.batch import optimize_batch
from moefast.search.node import place_batch
from moefast.topology.groups import group_nodes
from moefast.topology.times import Topology, batch_time, expected_time

E, K, GROUPS, TOP_GROUPS = 256, 8, 8, 4
NODES, GPN, SLOTS = 4, 8, 9
G = NODES * GPN
COST = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)  # docs/cost-model.md#a-batch, DeepSeek-V3 expert


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


def held_out_times(held: np.ndarray, held_table, placement, topology) -> dict[int, float]:
    """Modeled layer time (us) on held-out tokens: B = 1 exact over the held-out table,
    B = 64 and 256 the mean achievable time of 48 batches drawn from the held-out tokens
    (the same batches for every placement)."""
    rng = np.random.default_rng(7)
    times = {1: expected_time(held_table, placement, topology, round_us=COST.alpha)}
    for b in (64, 256):
        draws = [held[rng.choice(len(held), b, replace=False)] for _ in range(48)]
        times[b] = float(np.mean([batch_time(d, placement, topology, COST)[0] for d in draws]))
    return times


def test_node_aware_placement_against_eplb_and_compute_only():
    # One router, 60,000 tokens: the first half plans, the second half scores.
    tokens = group_limited_topk(60_000, seed=1)
    plan_tokens, held = tokens[:30_000], tokens[30_000:]
    table = mf.SubsetTable.from_topk(plan_tokens, num_experts=E).prune(coverage=0.9)
    held_table = mf.SubsetTable.from_topk(held, num_experts=E)
    topology = Topology.preset("h800_normal")
    load = np.bincount(plan_tokens.ravel(), minlength=E).astype(float)
    hierarchical = eplb(load, hierarchical=True)
    assert group_nodes(hierarchical, GROUPS, GPN) is not None
    fixed = {
        "compute-only greedy (moefast)": mf.optimize(table, G, SLOTS),
        "EPLB hierarchical": hierarchical,
        "EPLB global": eplb(load, hierarchical=False),
    }
    greedy = fixed["compute-only greedy (moefast)"]
    cpu = time.process_time()
    per_b: dict[str, dict[int, mf.Placement]] = {
        "node-aware (moefast)": {},
        "node-aware, groups on one node (moefast)": {},
        "compute-only batch search (moefast)": {1: greedy},
    }
    per_b["node-aware (moefast)"][1] = mf.optimize(
        table, mf.Cluster(G, SLOTS, topology=topology, round_us=COST.alpha)
    )
    for b, evaluations in ((1, 400), (64, 1500), (256, 1500)):
        search = {"topology": topology, "cost_model": COST, "batch_size": b}
        if b == 1:
            search["num_batches"] = 1024
        # Only EPLB's hierarchical placement keeps each group on one node among the starts.
        grouped, _ = place_batch(
            table,
            [hierarchical],
            SLOTS,
            num_groups=GROUPS,
            max_evaluations=evaluations,
            seed=1,  # other samples than the search below, which takes this plan as a start
            **search,
        )
        per_b["node-aware, groups on one node (moefast)"][b] = grouped
        if b > 1:
            compute_only = optimize_batch(table, greedy, SLOTS, COST, b, max_evaluations=3000)
            per_b["compute-only batch search (moefast)"][b] = compute_only
            starts = [greedy, hierarchical, compute_only, grouped]
            per_b["node-aware (moefast)"][b], _ = place_batch(
                table, starts, SLOTS, max_evaluations=evaluations, **search
            )
    cpu = time.process_time() - cpu
    results = {name: held_out_times(held, held_table, p, topology) for name, p in fixed.items()}
    for name, plans in per_b.items():
        results[name] = {
            b: held_out_times(held, held_table, p, topology)[b] for b, p in plans.items()
        }
        if "groups" in name:
            assert all(group_nodes(p, GROUPS, GPN) is not None for p in plans.values())
    ours = results["node-aware (moefast)"]
    print(
        f"\n{len(table)} subsets (90% of the 30,000 planning tokens); times on 30,000 held-out"
        f" tokens; node-aware and batch searches {cpu:.0f} s CPU"
    )
    print("| placement | B=1 (us) | B=64 (us) | B=256 (us) |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        cells = []
        for b in (1, 64, 256):
            delta = "" if r is ours else f" ({100 * (r[b] / ours[b] - 1):+.2f}% vs ours)"
            cells.append(f"{r[b]:.2f}{delta}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    # The batch times above are achievable choices; how far above the lower bound they are.
    rng = np.random.default_rng(8)
    for b in (64, 256):
        plan = per_b["node-aware (moefast)"][b]
        gaps = []
        for _ in range(16):
            upper, lower = batch_time(
                held[rng.choice(len(held), b, replace=False)], plan, topology, COST
            )
            gaps.append(upper / lower - 1)
        print(f"B={b}: achievable time at most {100 * max(gaps):.2f}% above the lower bound")
    for name in ("compute-only greedy (moefast)", "EPLB hierarchical", "EPLB global"):
        assert all(ours[b] < results[name][b] for b in (1, 64, 256)), name
    grouped = results["node-aware, groups on one node (moefast)"]
    assert all(grouped[b] < results["EPLB hierarchical"][b] for b in (1, 64, 256))


def test_grouped_decode_search_against_eplb_hierarchical():
    """B = 1, held out: the decode node-aware search with each of the 8 groups kept on one
    node (`optimize(topology=, num_groups=8)`: from the better of the compute-only greedy
    regrouped and EPLB hierarchical) against EPLB hierarchical, the unconstrained
    node-aware search, EPLB global and the compute-only greedy."""
    tokens = group_limited_topk(60_000, seed=1)
    plan_tokens, held = tokens[:30_000], tokens[30_000:]
    table = mf.SubsetTable.from_topk(plan_tokens, num_experts=E).prune(coverage=0.9)
    held_table = mf.SubsetTable.from_topk(held, num_experts=E)
    topology = Topology.preset("h800_normal")
    load = np.bincount(plan_tokens.ravel(), minlength=E).astype(float)
    greedy = mf.optimize(table, G, SLOTS)
    cpu = {}
    placed = {}
    for name, groups in (("node-aware, 8 groups on one node each", GROUPS), ("node-aware", None)):
        start = time.process_time()
        placed[name] = mf.optimize(
            table, mf.Cluster(G, SLOTS, topology=topology, num_groups=groups, round_us=COST.alpha)
        )
        cpu[name] = time.process_time() - start
    placed["EPLB hierarchical"] = eplb(load, hierarchical=True)
    placed["EPLB global"] = eplb(load, hierarchical=False)
    placed["compute-only greedy"] = greedy
    grouped = placed["node-aware, 8 groups on one node each"]
    assert group_nodes(grouped, GROUPS, GPN) is not None
    times = {
        name: expected_time(held_table, p, topology, round_us=COST.alpha)
        for name, p in placed.items()
    }
    ours = times["node-aware, 8 groups on one node each"]
    print(f"\nB = 1, 30,000 held-out tokens; CPU seconds of optimize (greedy included): {cpu}")
    print("| placement | B=1 (us) | vs grouped node-aware |")
    print("| --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {100 * (t / ours - 1):+.2f}% |")
    assert ours < times["EPLB hierarchical"]


def test_cli_plan_with_topology_on_v3_size_layers(tmp_path):
    """`moefast plan --topology h800_normal --gpus-per-node 8 --num-groups 8` on 4 layers of
    V3 size (256 experts, top-8, group-limited; 20,000 tokens each, 20% held out): CPU
    seconds of the whole command (every thread of the process) beside the same command
    without a topology."""
    layers = np.stack([group_limited_topk(20_000, seed=s) for s in range(4)], axis=1)
    trace = tmp_path / "v3.npz"
    mf.Trace(layers, E, layer_ids=[3, 4, 5, 6]).save(trace)
    base = ["plan", str(trace), "--gpus", str(G), "--slots", str(SLOTS), "--format", "json"]
    base += ["--out", str(tmp_path / "p.json"), "--no-sweep"]
    runs = {}
    for name, extra in (
        ("compute-only", []),
        ("topology", ["--topology", "h800_normal", "--gpus-per-node", "8", "--num-groups", "8"]),
    ):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter()
        assert main([*base, *extra]) == 0
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        runs[name] = (cpu, time.perf_counter() - wall)
    print()
    for name, (cpu, wall) in runs.items():
        print(f"moefast plan ({name}): {cpu:.1f} s CPU, {wall:.1f} s wall")
    print(
        f"ratio topology / compute-only: {runs['topology'][0] / runs['compute-only'][0]:.2f} (CPU)"
    )
