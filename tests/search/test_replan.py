"""Re-planning with few moves (`moefast.moves`, `optimize(current=, max_moves=)`): the
result stays within the copies allowed, is checked against the exact best within that
many copies by brute force on tiny layers, reaches the full re-plan with enough copies,
and refuses bad input."""

from __future__ import annotations

import itertools

import moefast as mf
import numpy as np
import pytest
from moefast.moves import copies, price_per_copy, relabel
from moefast.planning.replan import gain_curve, held_out_gain
from moefast.search.replan import replan
from support.reference import all_full_placements, reference_expected_cost, reference_table
from support.replan_reference import plain_copies


def skewed_topk(rng, tokens: int, experts: int, k: int, hot: int) -> np.ndarray:
    p = np.r_[[5.0] * hot, [1.0] * (experts - hot)]
    return np.array([rng.choice(experts, k, replace=False, p=p / p.sum()) for _ in range(tokens)])


@pytest.mark.parametrize("seed", range(6))
def test_brute_force_bounds_the_search_within_the_copies(seed):
    rng = np.random.default_rng(seed)
    experts, gpus, slots = 5, 3, 2
    topk = skewed_topk(rng, 60, experts, 2, 2)
    table = mf.SubsetTable.from_topk(topk, num_experts=experts)
    ref = reference_table(topk)
    placements = list(all_full_placements(experts, gpus, slots))
    # Every labelling of the GPUs: the copies depend on them.
    labelled = {
        r[:, list(perm)].tobytes(): r[:, list(perm)]
        for r in placements
        for perm in itertools.permutations(range(gpus))
    }
    everything = list(labelled.values())
    costs = [reference_expected_cost(ref, r) for r in everything]
    current_r = everything[rng.integers(len(everything))]
    current = mf.Placement(current_r)
    best_any = min(costs)
    target = mf.Placement(everything[int(np.argmin(costs))])
    for m in range(0, 5):
        exact = min(
            c for r, c in zip(everything, costs, strict=True) if plain_copies(current_r, r) <= m
        )
        found = replan(table, current, slots, target=target, max_moves=m)
        r = found.placement.replicas
        assert found.copies == plain_copies(current_r, r) == copies(current, found.placement) <= m
        assert (r.sum(axis=0) <= slots).all() and r.any(axis=1).all()
        cost = reference_expected_cost(ref, r)
        assert cost == pytest.approx(found.cost)
        # The exact best within m copies bounds what the search finds, which never costs
        # more than the current placement.
        assert exact - 1e-12 <= cost <= reference_expected_cost(ref, current_r) + 1e-12
    # Enough copies: the full re-plan (relabelled) is reached.
    found = replan(table, current, slots, target=target, max_moves=gpus * slots)
    assert found.cost == pytest.approx(best_any)
    assert found.full_cost == pytest.approx(best_any)


def test_relabelling_cuts_the_copies_of_a_full_replan():
    rng = np.random.default_rng(1)
    topk = skewed_topk(rng, 400, 16, 3, 4)
    table = mf.SubsetTable.from_topk(topk, num_experts=16)
    served = mf.optimize(table, 8, 3)
    renamed = mf.Placement(served.replicas[:, [3, 0, 1, 2, 7, 6, 5, 4]])
    assert copies(served, renamed) > 0
    assert relabel(served, renamed) == served
    # Nodes of 4 GPUs: renaming GPUs inside each node is allowed, and that one was.
    assert relabel(served, renamed, gpus_per_node=4) == served
    assert copies(served, relabel(served, renamed, gpus_per_node=2)) > 0
    with pytest.raises(ValueError, match="must divide"):
        relabel(served, renamed, gpus_per_node=3)


def test_optimize_from_the_current_placement_stays_within_max_moves():
    rng = np.random.default_rng(4)
    before = mf.SubsetTable.from_topk(skewed_topk(rng, 600, 24, 4, 6), num_experts=24)
    after = mf.SubsetTable.from_topk(skewed_topk(rng, 600, 24, 4, 6)[:, ::-1] % 24, num_experts=24)
    served = mf.optimize(before, 8, 4)
    full = mf.optimize(after, 8, 4)
    stale = mf.expected_cost(after, served)
    last = stale
    for m in (0, 1, 3, 8, 32):
        p = mf.optimize(after, 8, 4, current=served, max_moves=m)
        assert plain_copies(served.replicas, p.replicas) <= m
        assert (p.replicas.sum(axis=0) == 4).all()
        cost = mf.expected_cost(after, p)
        assert cost <= stale + 1e-12
        if m == 0:
            assert p == served
        last = cost
    assert last <= mf.expected_cost(after, full) + 1e-12
    # A price per copy: every move of the walk gains more than its copies cost.
    priced = replan(after, served, 4, target=full, copy_cost=0.004)
    for (c0, x0), (c1, x1) in itertools.pairwise(priced.path):
        assert x0 - x1 > 0.004 * (c1 - c0) - 1e-12
    assert replan(after, served, 4, target=full, copy_cost=1e9).copies == 0
    # The gain against moves: never worse with more moves, the full re-plan last.
    free = replan(after, served, 4, target=full)
    rows = gain_curve([free], [0, 2, 4, 8, 100])
    assert rows[0]["cost"] == pytest.approx(stale)
    assert all(a["cost"] >= b["cost"] for a, b in itertools.pairwise(rows[:-1]))
    assert rows[-1]["share_of_full_gain"] == 1.0


def test_batch_and_topology_objectives_stay_within_max_moves():
    from moefast.topology.times import Topology

    rng = np.random.default_rng(5)
    before = mf.SubsetTable.from_topk(skewed_topk(rng, 300, 16, 4, 4), num_experts=16)
    after = mf.SubsetTable.from_topk(skewed_topk(rng, 300, 16, 4, 4)[:, ::-1], num_experts=16)
    served = mf.optimize(before, 8, 3)
    model = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)
    for m in (0, 2, 6):
        p = mf.optimize(
            after,
            8,
            3,
            current=served,
            max_moves=m,
            objective="batch",
            batch_size=8,
            cost_model=model,
            num_batches=8,
            max_evaluations=200,
        )
        assert plain_copies(served.replicas, p.replicas) <= m
        q = mf.optimize(after, 8, 3, current=served, max_moves=m, topology=Topology.preset())
        assert plain_copies(served.replicas, q.replicas) <= m


def test_batch_replanning_gains_within_its_budget():
    """The batch objective re-plans by its own walk (step times of sampled batches, best
    gain per copy), not the decode walk: on a shifted workload it is faster than the
    served placement on batches it did not plan on, and keeps its budget."""
    from moefast.batch.times import simulate
    from moefast.search.batch import optimize_batch

    rng = np.random.default_rng(11)
    before = mf.SubsetTable.from_topk(skewed_topk(rng, 2000, 24, 4, 4), num_experts=24)
    after_ids = skewed_topk(rng, 4000, 24, 4, 4)
    after_ids = (after_ids + 7) % 24  # other hot experts
    plan_on = mf.SubsetTable.from_topk(after_ids[:2000], num_experts=24)
    held = mf.SubsetTable.from_topk(after_ids[2000:], num_experts=24)
    model = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)
    served = mf.optimize(before, 6, 5)

    def step_time(p):
        (r,) = simulate(held, p, [4], model, seed=3, steps=300)
        return r["mean_step_time"]

    stale = step_time(served)
    for m in (1, 3, 6):
        p = optimize_batch(plan_on, served, 5, model, 4, max_moves=m)
        assert plain_copies(served.replicas, p.replicas) <= m
    # Measured: 135.7 us served, 121.7 with 6 copies, 118.8 for a full re-plan.
    assert step_time(p) < 0.95 * stale
    with pytest.raises(ValueError, match="max_moves must be at least 0"):
        optimize_batch(plan_on, served, 5, model, 4, max_moves=-1)


def test_held_out_gain_scores_the_served_placement_the_re_plan_and_the_full_re_plan():
    rng = np.random.default_rng(6)
    tables = []
    for shift in (0, 5):
        ids = (skewed_topk(rng, 1200, 24, 4, 5) + shift) % 24
        tables.append(mf.SubsetTable.from_topk(ids, num_experts=24))
    plan_on, held = (
        tables,
        [
            mf.SubsetTable.from_topk((skewed_topk(rng, 600, 24, 4, 5) + s) % 24, num_experts=24)
            for s in (0, 5)
        ],
    )
    served = [mf.optimize(plan_on[1], 6, 5)] * 2  # layer 1 is served its own plan
    replans = [
        replan(t, c, 5, target=mf.optimize(t, 6, 5), max_moves=3)
        for t, c in zip(plan_on, served, strict=True)
    ]
    got = held_out_gain(held, replans, served)
    cost = [
        [mf.expected_cost(h, p) for h, p in zip(held, ps, strict=True)]
        for ps in (served, [r.placement for r in replans], [r.full for r in replans])
    ]
    assert got["served"] == pytest.approx(np.mean(cost[0]))
    assert got["replanned"] == pytest.approx(np.mean(cost[1]))
    assert got["full"] == pytest.approx(np.mean(cost[2]))
    gain = sum(cost[0]) - sum(cost[2])
    assert gain > 0
    assert got["share_of_full_gain"] == pytest.approx((sum(cost[0]) - sum(cost[1])) / gain)
    # No gain to recover when the full re-plan is no faster on the held-out tokens.
    same = held_out_gain(held[1:], replans[1:], [replans[1].full])
    assert same["share_of_full_gain"] is None


def test_price_per_copy_spreads_the_copy_over_the_tokens():
    # 44 MB at 50 GB/s is 880 us; over 1000 tokens of 47 us rounds: 0.0187 rounds a token.
    assert price_per_copy(44e6, 50.0, 1000) == pytest.approx(880 / 47 / 1000)
    with pytest.raises(ValueError, match="bandwidth_gb_s"):
        price_per_copy(44e6, 0.0, 1000)


def test_bad_input_is_refused():
    rng = np.random.default_rng(2)
    table = mf.SubsetTable.from_topk(skewed_topk(rng, 100, 12, 3, 3), num_experts=12)
    served = mf.optimize(table, 4, 4)
    with pytest.raises(ValueError, match="max_moves must be at least 0"):
        mf.optimize(table, 4, 4, current=served, max_moves=-1)
    with pytest.raises(ValueError, match="copy_cost"):
        mf.optimize(table, 4, 4, current=served, copy_cost=-0.5)
    with pytest.raises(ValueError, match="needs current"):
        mf.optimize(table, 4, 4, copy_cost=0.1)
    with pytest.raises(ValueError, match="not num_gpus = 6"):
        mf.optimize(table, 6, 4, current=served)
    other = mf.optimize(mf.SubsetTable.from_topk(np.array([[0, 1, 2]]), num_experts=13), 4, 4)
    with pytest.raises(ValueError, match="13 experts, not the trace's 12"):
        mf.optimize(table, 4, 4, current=other)
    with pytest.raises(ValueError, match="puts 4 experts on GPU 0, more than slots_per_gpu = 3"):
        mf.optimize(table, 4, 3, current=served)
    with pytest.raises(TypeError, match=r"current must be a moefast\.Placement"):
        mf.optimize(table, 4, 4, current=served.replicas)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_moves must be an int"):
        mf.optimize(table, 4, 4, current=served, max_moves=2.5)  # type: ignore[arg-type]


def test_cli_plans_from_the_current_placement_within_max_moves(tmp_path, capsys):
    from moefast.cli import main
    from moefast.io.engines import load_placement

    def synth(name: str, seed: int) -> str:
        out = tmp_path / name
        args = ["synth", "--experts=32", "--k=4", "--layers=2", "--tokens=2000"]
        assert main([*args, f"--seed={seed}", "--out", str(out)]) == 0
        return str(out)

    before, after = synth("a.npz", 1), synth("b.npz", 2)
    served = tmp_path / "served.json"
    common = ["--gpus", "8", "--slots", "5"]
    assert main(["plan", before, *common, "--format", "json", "--out", str(served)]) == 0
    out = tmp_path / "sglang.json"
    layout = ["--num-layers", "2", "--moe-layers", "0-1"]
    args = ["plan", after, *common, *layout, "--out", str(out), "--current", str(served)]
    capsys.readouterr()
    report = tmp_path / "report"
    assert main([*args, "--max-moves", "3", "--report", str(report), "--no-sweep"]) == 0
    printed = capsys.readouterr().out
    assert "share of full gain" in printed and "full re-plan" in printed
    # The re-plan is also scored on the tokens held out of planning (the last 20%).
    assert "held out (tokens not planned on), mean per layer in rounds: served" in printed
    assert "gain against moves" in (report / "report.md").read_text()
    # The engine file loads, and each layer copies at most 3 experts' weights.
    new = load_placement(out, num_gpus=8)
    old = load_placement(served)
    for p, q in zip(old, new, strict=True):
        assert plain_copies(p.replicas, q.replicas) <= 3
        assert (q.replicas.sum(axis=0) == 5).all()
    # Bad input: a budget without a served placement, a negative budget, other GPUs.
    assert (
        main(
            ["plan", after, *common, "--out", str(tmp_path / "x.json"), *layout, "--max-moves", "3"]
        )
        == 2
    )
    assert "need --current" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--max-moves", "-1"])
    bad_gpus = ["--gpus", "4", "--slots", "10"]
    code = main(
        [
            "plan",
            after,
            *bad_gpus,
            *layout,
            "--out",
            str(tmp_path / "y.json"),
            "--current",
            str(served),
        ]
    )
    assert code == 2 and "current has 8 GPUs, not num_gpus = 4" in capsys.readouterr().err


def test_plan_re_plans_every_layer_from_the_current_placements():
    rng = np.random.default_rng(8)
    before = [mf.SubsetTable.from_topk(skewed_topk(rng, 300, 16, 3, 4), num_experts=16)] * 2
    after = [mf.SubsetTable.from_topk(skewed_topk(rng, 300, 16, 3, 4), num_experts=16)] * 2
    served = mf.plan(before, 4, 5, holdout=0)
    model = mf.plan(after, 4, 5, holdout=0, current=served, max_moves=2)
    for p, q in zip(served.placements, model.placements, strict=True):
        assert plain_copies(p.replicas, q.replicas) <= 2
    summary = model.settings["replan"]
    assert summary["max_moves"] == 2 and max(summary["copies"]) <= 2
    assert [row["moves"] for row in summary["curve"][:-1]] == [0, 1, 2]
    with pytest.raises(ValueError, match="current has 1 layers, the trace 2"):
        mf.plan(after, 4, 5, holdout=0, current=served.placements[:1])
    with pytest.raises(ValueError, match="needs current"):
        mf.plan(after, 4, 5, holdout=0, max_moves=2)


@pytest.mark.slow
def test_plan_re_plans_batches_with_the_batch_walk_as_optimize_does():
    """`plan(objective="batch", current=)` re-plans each layer for step time (the batch
    walk, the relabelled batch plan or the served placement, by simulated step time), as
    `optimize(objective="batch", current=)` does, not by the decode walk."""
    model = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)
    before = mf.synthetic_trace(1500, 24, 4, 2, seed=1)
    after = mf.synthetic_trace(1500, 24, 4, 2, seed=2)
    batch = dict(objective="batch", batch_size=8, cost_model=model)
    served = mf.plan(before, 6, 5, holdout=0, progress=False, **batch)
    replanned = mf.plan(
        after, 6, 5, holdout=0, progress=False, current=served, max_moves=3, **batch
    )
    for layer in range(2):
        table = after.table(layer).prune(coverage=0.99)
        expected = mf.optimize(table, 6, 5, current=served[layer], max_moves=3, **batch)
        assert replanned[layer] == expected
        assert plain_copies(served[layer].replicas, replanned[layer].replicas) <= 3
    summary = replanned.settings["replan"]
    assert summary["unit"] == "us per step of 8 tokens, simulated"
    assert "held_out" not in summary  # holdout=0: nothing held out
    # The batch walk keeps its end only: the gain against moves at 0 and the budget.
    assert [row["moves"] for row in summary["curve"][:-1]] == [0, 3]
    assert all(c <= s + 1e-9 for c, s in zip(summary["costs"], summary["stale_costs"], strict=True))

    # With tokens held out, the re-plan is scored on them in step time too.
    held = mf.plan(after, 6, 5, progress=False, current=served, max_moves=3, **batch)
    record = held.settings["replan"]["held_out"]
    assert record["served"] > 0 and record["replanned"] > 0 and record["full"] > 0
