"""Re-planning for batches with communication: the node-aware batch search
walks from the served placement within a move budget (`moefast.search.node.place_batch_walk`,
`optimize(objective="batch", topology=, current=, max_moves=)`, `plan`, the CLI)."""

from __future__ import annotations

import itertools

import moefast as mf
import numpy as np
import pytest
from moefast.cli import main
from moefast.moves import CopyPrice, relabel
from moefast.search.node import place_batch_walk
from moefast.topology.groups import group_nodes
from moefast.topology.times import Topology, sample_batch_time, walk_batches
from support.replan_reference import plain_copies
from support.topology_reference import brute_group_nodes
from support.workloads import grouped_topk

GPUS, SLOTS, EXPERTS, GPN = 8, 5, 32, 4
TOPO = Topology.preset("h800_normal", gpus_per_node=GPN)
MODEL = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)
# Small samples and searches: the tests check budgets and guards, not quality.
BATCH = {"objective": "batch", "batch_size": 8, "cost_model": MODEL, "num_batches": 12}
FAST = {**BATCH, "max_evaluations": 300}


@pytest.fixture(scope="module")
def shift():
    """Tables before and after a shift (other hot experts), the node-aware batch plan
    served before it, and the full node-aware batch plan after it."""
    rng = np.random.default_rng(3)
    ids = grouped_topk(rng, 1200, EXPERTS, 4, 4)
    before = mf.SubsetTable.from_topk(ids[:600], num_experts=EXPERTS)
    after = mf.SubsetTable.from_topk((ids[600:] + 5) % EXPERTS, num_experts=EXPERTS)
    served = mf.optimize(before, GPUS, SLOTS, topology=TOPO, **FAST)
    full = mf.optimize(after, GPUS, SLOTS, topology=TOPO, **FAST)
    return before, after, served, full


def sample(table, p, validation=False):
    return sample_batch_time(
        table,
        p,
        topology=TOPO,
        cost_model=MODEL,
        batch_size=8,
        num_batches=12,
        validation=validation,
    )


def walk(after, served, **kw):
    options = {"topology": TOPO, "cost_model": MODEL, "batch_size": 8, "num_batches": 12}
    return place_batch_walk(after, served, SLOTS, max_evaluations=400, **options, **kw)


def test_the_walk_keeps_its_budget_and_never_loses_on_the_sample(shift):
    _, after, served, full = shift
    stale = sample(after, served)
    target = relabel(served, full, GPN)
    gained = False
    for m, tgt in itertools.product((0, 1, 3, 8), (None, target)):
        p, mean, moved, path = walk(after, served, max_moves=m, target=tgt)
        assert moved == plain_copies(served.replicas, p.replicas) <= m
        assert mean == pytest.approx(sample(after, p)) and mean <= stale + 1e-9
        assert path[0] == (0, pytest.approx(stale))
        for (_, x0), (c1, x1) in itertools.pairwise(path):
            assert x1 < x0 and c1 <= m
        assert (moved, pytest.approx(mean)) in path  # a point of the walk
        if m == 0:
            assert p == served and len(path) == 1
        gained |= mean < stale - 1e-9
    assert gained


def test_a_copy_price_makes_each_step_pay_for_its_copies(shift):
    _, after, served, _ = shift
    price = 0.3
    _, _, _, path = walk(after, served, copy_price=price)
    for (c0, x0), (c1, x1) in itertools.pairwise(path):
        assert x0 - x1 > price * (c1 - c0) - 1e-9
    p, _, moved, path = walk(after, served, copy_price=1e9)
    assert p == served and moved == 0 and len(path) == 1


def test_optimize_re_plans_within_max_moves_and_never_loses(shift):
    _, after, served, full = shift

    def both(p):  # what the re-plan compares its candidates on
        return sample(after, p) + sample(after, p, validation=True)

    for m in (0, 2, 6):
        p = mf.optimize(after, GPUS, SLOTS, topology=TOPO, current=served, max_moves=m, **FAST)
        assert plain_copies(served.replicas, p.replicas) <= m
        assert both(p) <= both(served) + 1e-9
        if m == 0:
            assert p == served
    # Enough moves: at least as good as the relabelled full plan (which fits now).
    p = mf.optimize(after, GPUS, SLOTS, topology=TOPO, current=served, **FAST)
    assert both(p) <= both(relabel(served, full, GPN)) + 1e-9
    assert both(relabel(served, full, GPN)) == pytest.approx(both(full))


def test_a_copy_cost_prices_each_copy_in_step_time(shift):
    """`copy_cost` (rounds per token per copy) costs copy_cost x round_us x batch_size us
    of step time per copy: a huge price keeps the served placement; with a small one the
    result never loses against the served placement net of its copies' price."""
    _, after, served, _ = shift
    kw = {"topology": TOPO, "current": served, **FAST}
    assert mf.optimize(after, GPUS, SLOTS, copy_cost=1e6, **kw) == served
    price = 0.002  # 0.002 x 47 x 8 = 0.75 us per copy
    priced = mf.optimize(after, GPUS, SLOTS, copy_cost=price, **kw)
    n = plain_copies(served.replicas, priced.replicas)

    def both(p):
        return (sample(after, p) + sample(after, p, validation=True)) / 2

    assert both(priced) + price * 47 * 8 * n <= both(served) + 1e-9


def test_groups_stay_on_their_nodes_and_a_served_placement_must_keep_them(shift):
    before, after, _, _ = shift
    kw = {"topology": TOPO, "num_groups": 4, **FAST}
    served = mf.optimize(before, GPUS, SLOTS, **kw)
    nodes = brute_group_nodes(served, 4, GPN)
    assert nodes is not None
    for m in (3, None):
        p = mf.optimize(after, GPUS, SLOTS, current=served, max_moves=m, **kw)
        if m is not None:
            assert plain_copies(served.replicas, p.replicas) <= m
            # Within a small budget no group can change node (a node's slots are full).
            assert brute_group_nodes(p, 4, GPN) == nodes
        assert brute_group_nodes(p, 4, GPN) is not None
    spread = mf.optimize(before, GPUS, SLOTS, method="round_robin")
    with pytest.raises(ValueError, match="current: expert"):
        mf.optimize(after, GPUS, SLOTS, current=spread, max_moves=3, **kw)
    with pytest.raises(ValueError, match="current: expert"):
        walk(after, spread, max_moves=3, num_groups=4)
    assert group_nodes(served, 4, GPN) == nodes


def test_bad_input_is_refused(shift):
    _, after, served, _ = shift
    kw = {"topology": TOPO, "current": served, **FAST}
    with pytest.raises(ValueError, match="max_moves must be at least 0"):
        mf.optimize(after, GPUS, SLOTS, max_moves=-1, **kw)
    with pytest.raises(ValueError, match="max_moves must be at least 0"):
        walk(after, served, max_moves=-1)
    with pytest.raises(ValueError, match="copy_price"):
        walk(after, served, copy_price=-1.0)
    with pytest.raises(ValueError, match=r"a CopyPrice by link .* is for the decode"):
        mf.optimize(after, GPUS, SLOTS, max_moves=2, copy_cost=CopyPrice(0.0, 0.1), **kw)
    with pytest.raises(ValueError, match="copy_cost must be"):
        mf.optimize(after, GPUS, SLOTS, max_moves=2, copy_cost=-0.1, **kw)
    with pytest.raises(ValueError, match="current has 8 GPUs, not num_gpus = 4"):
        mf.optimize(after, 4, 10, max_moves=2, **kw)
    wide = mf.optimize(mf.SubsetTable.from_topk(np.array([[0, 1, 2, 3]]), num_experts=40), 8, 5)
    with pytest.raises(ValueError, match="40 experts, not the trace's 32"):
        mf.optimize(after, GPUS, SLOTS, max_moves=2, **{**kw, "current": wide})
    with pytest.raises(ValueError, match="40 experts"):
        walk(after, wide, max_moves=2)
    with pytest.raises(ValueError, match="the target placement has 32 experts on 4 GPUs"):
        walk(after, served, target=mf.optimize(after, 4, 10))
    with pytest.raises(TypeError, match=r"current must be a moefast\.Placement"):
        walk(after, served.replicas)


@pytest.mark.slow
def test_plan_and_the_cli_re_plan_batches_with_a_topology(tmp_path, capsys):
    # Small: 16 experts on 2 nodes of 2 GPUs (plan runs the full searches).
    before = mf.synthetic_trace(500, 16, 4, 1, seed=1, layer_ids=[3])
    after = mf.synthetic_trace(500, 16, 4, 1, seed=2, layer_ids=[3])
    topo = Topology.preset("h800_normal", gpus_per_node=2)
    kw = {"objective": "batch", "batch_size": 4, "cost_model": MODEL, "topology": topo}
    served = mf.plan(before, 4, 5, holdout=0, **kw)
    model = mf.plan(after, 4, 5, holdout=0, current=served, max_moves=3, **kw)
    summary = model.settings["replan"]
    assert summary["unit"] == "us per step of 4 tokens, with communication"
    old, new = served.placements[0], model.placements[0]
    pruned = after.tables()[0].prune(coverage=0.99)
    assert plain_copies(old.replicas, new.replicas) == summary["copies"][0] <= 3
    # Costs on the walk's sample.
    score = {"topology": topo, "cost_model": MODEL, "batch_size": 4}
    score["num_batches"] = walk_batches(4)
    assert summary["costs"][0] == pytest.approx(sample_batch_time(pruned, new, **score))
    assert summary["stale_costs"][0] == pytest.approx(sample_batch_time(pruned, old, **score))
    assert summary["costs"][0] <= summary["stale_costs"][0] + 1e-9
    assert "served (current)" in model.settings["topology"]["layer_times_us"]
    # Held out: the served placement and the re-plan scored on the tokens not planned on.
    held = mf.plan(after, 4, 5, holdout=0.3, current=served, max_moves=3, **kw)
    _, test = after.split(0.3, by="time")
    record = held.settings["replan"]["held_out"]
    score = {"topology": topo, "cost_model": MODEL, "batch_size": 4}
    for key, p in (("served", old), ("replanned", held.placements[0])):
        assert record[key] == pytest.approx(sample_batch_time(test.tables()[0], p, **score))
    served.save(tmp_path / "served.json", "json")
    after.save(tmp_path / "after.npz")
    args = ["plan", str(tmp_path / "after.npz"), "--gpus", "4", "--slots", "5", "--no-sweep"]
    args += ["--out", str(tmp_path / "new.json"), "--format", "json", "--holdout", "0"]
    args += ["--current", str(tmp_path / "served.json"), "--max-moves", "3", "--batch-size", "4"]
    args += ["--topology", "h800_normal", "--gpus-per-node", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "gain against moves" in text and "us per step of 4 tokens" in text
    saved = mf.load_placement(tmp_path / "new.json")
    assert saved.settings["replan"]["copies"] == summary["copies"]
