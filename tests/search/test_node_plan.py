"""Node-aware plans of whole models and group-limited routing as a constraint."""

from __future__ import annotations

import json

import moefast as mf
import numpy as np
import pytest
from moefast.cli import main
from moefast.search.node import eplb_hierarchical, place, regroup, spread_groups
from moefast.search.node_plan import EPLB_GLOBAL, EPLB_HIERARCHICAL, NODE_AWARE, node_aware_decode
from moefast.topology.groups import check
from moefast.topology.times import Topology, expected_time, sample_batch_time
from support.topology_reference import brute_group_nodes
from support.workloads import grouped_topk

MODEL = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)


def full_and_grouped(p: mf.Placement, slots: int, num_groups: int, gpn: int) -> list[int] | None:
    assert list(p.slots_used) == [slots] * p.num_gpus
    assert p.replicas.any(axis=1).all()
    return brute_group_nodes(p, num_groups, gpn)


# (experts, gpus, gpus per node, slots, groups)
SHAPES = [(32, 8, 4, 5, 4), (32, 8, 2, 6, 8), (48, 12, 4, 5, 6), (40, 8, 4, 6, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_grouped_decode_search_keeps_each_group_on_its_node_and_never_loses(shape):
    experts, gpus, gpn, slots, groups = shape
    rng = np.random.default_rng(experts + gpus + groups)
    topology = Topology.preset("h800_normal", gpus_per_node=gpn)
    for case in range(2):
        table = mf.SubsetTable.from_topk(grouped_topk(rng, 500, experts, groups, 4), experts)
        greedy = mf.optimize(table, gpus, slots, seed=case)
        start = regroup(table, greedy, slots, num_groups=groups, topology=topology)
        nodes = full_and_grouped(start, slots, groups, gpn)
        assert nodes is not None
        found, _ = place(table, start, slots, topology=topology, num_groups=groups, seed=case)
        assert full_and_grouped(found, slots, groups, gpn) == nodes
        assert expected_time(table, found, topology) <= expected_time(table, start, topology) + 1e-9
        # optimize: never worse than the best grouped start (regrouped greedy, EPLB's).
        planned = mf.optimize(table, gpus, slots, topology=topology, num_groups=groups, seed=case)
        assert full_and_grouped(planned, slots, groups, gpn) is not None
        spread = spread_groups(table, gpus, slots, num_groups=groups, topology=topology)
        assert full_and_grouped(spread, slots, groups, gpn) is not None
        starts = [start, spread]
        hierarchical = eplb_hierarchical(table, gpus, slots, num_groups=groups, gpus_per_node=gpn)
        if groups % (gpus // gpn) == 0:
            assert hierarchical is not None
            assert full_and_grouped(hierarchical, slots, groups, gpn) is not None
            starts.append(hierarchical)
        else:
            assert hierarchical is None  # EPLB takes its global policy there
        best_start = min(expected_time(table, p, topology) for p in starts)
        assert expected_time(table, planned, topology) <= best_start + 1e-9


def test_infeasible_groupings_are_refused():
    rng = np.random.default_rng(1)
    table = mf.SubsetTable.from_topk(grouped_topk(rng, 300, 32, 4, 4), 32)
    topo = Topology.preset("h800_normal", gpus_per_node=4)
    with pytest.raises(ValueError, match="num_groups = 5 must divide the 32 experts"):
        mf.optimize(table, 8, 5, topology=topo, num_groups=5)
    # 4 groups of 8 on 3 nodes of 4 GPUs x 3 slots: a node holds 2 groups, 16 experts in 12
    # slots (though 36 slots in all hold the 32 experts).
    with pytest.raises(ValueError, match=r"16 experts\), more than its 4 GPUs x 3 slots"):
        mf.optimize(table, 12, 3, topology=topo, num_groups=4)
    with pytest.raises(ValueError, match=r"more than its 4 GPUs x 5 slots"):
        check(topo, 48, 8, 5, 2)
    with pytest.raises(ValueError, match="cannot cover the 4 nodes"):
        check(topo, 32, 16, 4, 2)
    with pytest.raises(ValueError, match="must divide the 10 GPUs"):
        check(topo, 32, 10, 5)
    with pytest.raises(ValueError, match="num_groups needs topology"):
        mf.optimize(table, 8, 5, num_groups=4)
    with pytest.raises(TypeError, match="topology must be"):
        check("h800_normal", 32, 8, 5)  # type: ignore[arg-type]
    spread = mf.optimize(table, 8, 5, method="round_robin")
    with pytest.raises(ValueError, match="the start placement: expert"):
        place(table, spread, 5, topology=topo, num_groups=4)
    with pytest.raises(ValueError, match="current: expert"):
        mf.optimize(table, 8, 5, topology=topo, num_groups=4, current=spread, max_moves=4)


def test_without_a_topology_results_are_unchanged():
    rng = np.random.default_rng(2)
    table = mf.SubsetTable.from_topk(grouped_topk(rng, 400, 32, 4, 4), 32)
    base = mf.optimize(table, 8, 5)
    assert mf.optimize(table, 8, 5, topology=None, num_groups=None) == base
    # optimize(topology=) without groups is the node-aware search from the compute-only plan.
    topo = Topology.preset("h800_normal", gpus_per_node=4)
    direct, _ = place(table, base, 5, topology=topo)
    assert mf.optimize(table, 8, 5, topology=topo) == direct
    trace = mf.synthetic_trace(800, 32, 4, 2, seed=3)
    plain = mf.plan(trace, 8, 5)
    same = mf.plan(trace, 8, 5, topology=None, num_groups=None)
    assert "topology" not in plain.settings
    assert plain.settings == same.settings
    assert plain.placements == same.placements
    assert np.array_equal(plain.layer_costs, same.layer_costs)
    # The plan's placements are the per-layer optimize of the train part's pruned tables.
    train, _ = trace.split(0.2, by="time")
    assert plain.placements == [mf.optimize(t.prune(coverage=0.99), 8, 5) for t in train.tables()]


def test_plan_with_a_topology_reports_held_out_times_with_communication():
    trace = mf.synthetic_trace(900, 32, 4, 2, seed=4)
    topo = Topology.preset("h800_normal", gpus_per_node=4)
    model = mf.plan(trace, 8, 5, topology=topo, num_groups=4, round_us=47.0)
    record = model.settings["topology"]
    assert record["basis"] == model.settings["cost_basis"] == "held-out"
    assert list(record["layer_times_us"]) == [
        NODE_AWARE,
        EPLB_HIERARCHICAL,
        EPLB_GLOBAL,
        "compute-only greedy",
    ]
    train, test = trace.split(0.2, by="time")
    for i, (plan_table, test_table) in enumerate(zip(train.tables(), test.tables(), strict=True)):
        p = model.placements[i]
        assert brute_group_nodes(p, 4, 4) is not None
        compute_only = mf.optimize(plan_table.prune(coverage=0.99), 8, 5)
        assert p == node_aware_decode(
            plan_table.prune(coverage=0.99),
            [compute_only],
            5,
            topology=topo,
            round_us=47.0,
            seed=0,
            num_groups=4,
        )
        times = record["layer_times_us"]
        assert times[NODE_AWARE][i] == pytest.approx(expected_time(test_table, p, topo))
        assert times["compute-only greedy"][i] == pytest.approx(
            expected_time(test_table, compute_only, topo)
        )
    json.dumps(model.settings)  # files keep settings as JSON
    in_sample = mf.plan(trace, 8, 5, topology=topo, holdout=0)
    assert in_sample.settings["topology"]["basis"] == "in-sample"
    assert EPLB_HIERARCHICAL not in in_sample.settings["topology"]["layer_times_us"]
    # 3 nodes of 4 GPUs x 4 slots, 4 groups of 8 (not a multiple of the nodes).
    odd = mf.plan(trace, 12, 4, topology=topo, num_groups=4)
    assert EPLB_HIERARCHICAL not in odd.settings["topology"]["layer_times_us"]
    assert "EPLB takes its global policy" in odd.settings["topology"]["note"]
    with pytest.raises(ValueError, match="num_groups needs topology"):
        mf.plan(trace, 8, 5, num_groups=4)
    with pytest.raises(ValueError, match="must divide the 32 experts"):
        mf.plan(trace, 8, 5, topology=topo, num_groups=3)


def test_plan_for_batches_with_a_topology_and_groups():
    trace = mf.synthetic_trace(600, 16, 4, 1, seed=5)
    topo = Topology.preset("h800_normal", gpus_per_node=2)
    kw = {"objective": "batch", "batch_size": 8, "cost_model": MODEL}
    model = mf.plan(trace, 4, 5, topology=topo, num_groups=4, **kw)
    record = model.settings["topology"]
    assert "batches of 8 tokens" in record["measure"]
    assert "compute-only batch search" in record["layer_times_us"]
    assert brute_group_nodes(model.placements[0], 4, 2) is not None
    _, test = trace.split(0.2, by="time")
    score = {"topology": topo, "cost_model": MODEL, "batch_size": 8}
    assert record["layer_times_us"][NODE_AWARE][0] == pytest.approx(
        sample_batch_time(test.tables()[0], model.placements[0], **score)
    )


def test_cli_plans_node_aware_and_checks_its_options(tmp_path, capsys):
    trace = tmp_path / "t.npz"
    mf.synthetic_trace(900, 32, 4, 2, seed=6).save(trace)
    out = tmp_path / "p.json"
    base = ["plan", str(trace), "--gpus", "8", "--slots", "5", "--out", str(out)]
    base += ["--format", "json"]
    topo = ["--topology", "h800_normal", "--gpus-per-node", "4"]
    assert main([*base, *topo, "--num-groups", "4"]) == 0
    text = capsys.readouterr().out
    assert "held-out modeled layer time with communication" in text
    assert "EPLB hierarchical" in text and "compute-only greedy" in text
    assert "keep each of the 4 expert groups on one node" in text
    saved = mf.load_placement(out)
    assert saved.settings["topology"]["preset"] == "h800_normal"
    assert all(brute_group_nodes(p, 4, 4) is not None for p in saved.placements)
    bad = [
        (["--topology", "h800_normal", "--gpus-per-node", "3"], "not a multiple of --gpus-per"),
        (["--num-groups", "4"], "--num-groups needs --topology"),
        ([*topo, "--num-groups", "3"], "num_groups = 3 must divide the 32 experts"),
    ]
    for extra, message in bad:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert main([*base]) == 0
    assert "with communication" not in capsys.readouterr().out
