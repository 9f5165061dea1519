"""Topology, times with communication and re-planning with few moves."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import moefast as mf
import numpy as np
import pytest
from moefast.search.node import place, place_batch
from moefast.topology.groups import group_nodes
from moefast.topology.times import (
    Topology,
    Transfer,
    batch_time,
    expected_time,
    sample_batch_time,
    subset_times,
)
from support.topology_reference import brute_group_nodes


def random_case(rng: np.random.Generator, experts: int, gpus: int, k: int, extra: int):
    lists = [[e % gpus] for e in range(experts)]
    for _ in range(extra):
        e, g = int(rng.integers(experts)), int(rng.integers(gpus))
        if g not in lists[e]:
            lists[e].append(g)
    placement = mf.Placement.from_lists(lists, num_gpus=gpus)
    topk = np.array([rng.choice(experts, k, replace=False) for _ in range(30)])
    return placement, mf.SubsetTable.from_topk(topk, num_experts=experts)


def brute_token_time(subset, placement, topology, round_us):
    """Plain reference: every replica choice, busiest GPU's rounds plus communication."""
    replicas = placement.replicas
    choices = [np.flatnonzero(replicas[e]) for e in subset]
    best = np.inf
    for pick in itertools.product(*choices):
        rounds = max(np.bincount(pick))
        nodes = len({g // topology.gpus_per_node for g in pick})
        comm = topology.comm_us(1, len(subset), nodes, placement.num_gpus)
        best = min(best, round_us * rounds + comm)
    return best


def test_without_communication_times_are_todays_costs():
    rng = np.random.default_rng(0)
    for case in range(20):
        placement, table = random_case(rng, 10, 4 + 2 * (case % 3), 1 + case % 4, case)
        times = subset_times(table, placement, Topology.free(2), round_us=1.0)
        assert np.array_equal(times, mf.subset_costs(table, placement).astype(float))


@pytest.mark.parametrize("preset", ["h800_normal", "h800_low_latency"])
def test_token_time_is_the_best_replica_choice(preset):
    rng = np.random.default_rng(1)
    for case in range(15):
        topology = Topology.preset(preset, gpus_per_node=(1, 2, 4)[case % 3])
        placement, table = random_case(rng, 8, 8, 1 + case % 4, 6 + case)
        round_us = (0.0, 10.0, 47.0)[case % 3]
        times = subset_times(table, placement, topology, round_us=round_us)
        for row, t in zip(table.subsets, times, strict=True):
            assert t == pytest.approx(brute_token_time(row, placement, topology, round_us))


def test_presets_and_communication():
    normal = Topology.preset("h800_normal")
    assert normal.dispatch.bytes_per_token == 7168 + 7168 // 128 * 4
    assert normal.combine.bytes_per_token == 7168 * 2
    # A token reaching more nodes sends more; low-latency kernels send per expert anyway.
    assert normal.comm_us(256, 8, 256, 32) < normal.comm_us(256, 8, 1024, 32)
    ll = Topology.preset("h800_low_latency")
    assert ll.per_pair and ll.comm_us(256, 8, 256, 32) == ll.comm_us(256, 8, 1024, 32)
    # DeepEP's low-latency dispatch + combine at EP 32 (155 + 273 us), within 15%.
    assert ll.comm_us(128 * 32, 8, 0, 32) == pytest.approx(155 + 273, rel=0.15)
    with pytest.raises(ValueError, match="unknown topology preset"):
        Topology.preset("a100")
    with pytest.raises(ValueError, match="divide"):
        normal.comm_us(1, 8, 1, 12)


def test_batch_bounds_and_node_aware_search():
    rng = np.random.default_rng(2)
    topology = Topology.preset("h800_normal", gpus_per_node=4)
    topk = np.array([rng.choice(24, 4, replace=False) for _ in range(400)])
    table = mf.SubsetTable.from_topk(topk, num_experts=24)
    start = mf.optimize(table, 16, 3, method="round_robin")
    better = mf.optimize(table, 16, 3, method="round_robin", topology=topology)
    assert expected_time(table, better, topology) < expected_time(table, start, topology)
    model = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)
    upper, lower = batch_time(topk[:64], better, topology, model)
    compute = mf.batch_time(topk[:64], better, model)
    # The compute-optimal split is one of the choices; a token reaches at most 4 nodes.
    assert lower <= upper <= compute + topology.comm_us(64, 4, 64 * 4, 16) + 1e-9


def test_replanning_respects_max_moves():
    rng = np.random.default_rng(3)
    topk = np.array(
        [rng.choice(24, 4, replace=False, p=np.r_[[4.0] * 6, [1.0] * 18] / 42) for _ in range(500)]
    )
    table = mf.SubsetTable.from_topk(topk, num_experts=24)
    served = mf.optimize(table, 8, 4, method="contiguous")
    for m in (0, 1, 4):
        p, moved = place(table, served, 4, max_moves=m)
        copies = int((p.replicas & ~served.replicas).sum())
        assert moved == copies <= m
        assert mf.expected_cost(table, p) <= mf.expected_cost(table, served)
    replanned = mf.optimize(table, 8, 4, current=served, max_moves=4)
    assert int((replanned.replicas & ~served.replicas).sum()) <= 4
    with pytest.raises(ValueError, match="max_moves needs current"):
        mf.optimize(table, 8, 4, max_moves=3)
    with pytest.raises(ValueError, match="not num_gpus"):
        mf.optimize(table, 4, 8, current=served)


def grouped_lists(num_groups: int, group_size: int, nodes: int, gpn: int, slots: int):
    """Each node holds num_groups / nodes whole groups, spread over its GPUs, its spare
    slots filled with second replicas of its first experts (plain construction)."""
    lists: list[list[int]] = [[] for _ in range(num_groups * group_size)]
    per_node = num_groups // nodes * group_size
    for node in range(nodes):
        experts = list(range(node * per_node, (node + 1) * per_node))
        cells = [node * gpn + i % gpn for i in range(gpn * slots)]
        for e, g in zip(experts, cells, strict=False):
            lists[e].append(g)
        spare = cells[len(experts) :]
        for e, g in zip(experts, spare, strict=False):
            if g not in lists[e]:
                lists[e].append(g)
    return lists


def test_group_nodes_against_a_plain_check():
    rng = np.random.default_rng(4)
    grouped = mf.Placement.from_lists(grouped_lists(4, 4, 2, 2, 5), num_gpus=4)
    assert group_nodes(grouped, 4, 2) == brute_group_nodes(grouped, 4, 2) == [0, 0, 1, 1]
    for case in range(40):
        # A grouped placement with one replica added anywhere (often off its node).
        lists = grouped_lists(4, 4, 2, 2, 5)
        e, g = int(rng.integers(16)), int(rng.integers(4))
        if g not in lists[e]:
            lists[e].append(g)
        placement = mf.Placement.from_lists(lists, num_gpus=4)
        if case % 4 == 0:
            placement, _ = random_case(rng, 16, 4, 2, case)
        expected = brute_group_nodes(placement, 4, 2)
        if expected is None:
            with pytest.raises(ValueError, match="a group must live on one node"):
                group_nodes(placement, 4, 2)
        else:
            assert group_nodes(placement, 4, 2) == expected
    with pytest.raises(ValueError, match="must divide"):
        group_nodes(grouped, 3, 2)


def test_batch_search_with_communication_and_groups():
    rng = np.random.default_rng(5)
    hot = np.r_[[3.0] * 4, [1.0] * 12]
    topk = np.array([rng.choice(16, 4, replace=False, p=hot / hot.sum()) for _ in range(2000)])
    table = mf.SubsetTable.from_topk(topk, num_experts=16)
    topology = Topology.preset("h800_normal", gpus_per_node=2)
    model = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)
    grouped = mf.Placement.from_lists(grouped_lists(4, 4, 2, 2, 5), num_gpus=4)
    spread = mf.optimize(table, 4, 5, method="round_robin")
    kw = {"topology": topology, "cost_model": model, "batch_size": 32, "num_batches": 16}
    found, mean = place_batch(table, [grouped, spread], 5, max_evaluations=300, **kw)
    assert mean == pytest.approx(sample_batch_time(table, found, **kw))

    def both(p):
        return sample_batch_time(table, p, **kw) + sample_batch_time(
            table, p, validation=True, **kw
        )

    assert both(found) < min(both(p) for p in (grouped, spread))
    assert max(found.slots_used) <= 5
    # Groups kept on their nodes; a start that spreads them is refused.
    kept, kept_mean = place_batch(table, [grouped], 5, num_groups=4, max_evaluations=300, **kw)
    assert group_nodes(kept, 4, 2) == [0, 0, 1, 1]
    assert kept_mean <= sample_batch_time(table, grouped, **kw)
    with pytest.raises(ValueError, match=r"starts\[0\]: expert"):
        place_batch(table, [spread], 5, num_groups=4, **kw)
    with pytest.raises(TypeError, match=r"starts\[1\] must be a Placement"):
        place_batch(table, [grouped, "x"], 5, **kw)  # type: ignore[list-item]


def test_optimize_batch_objective_with_a_topology():
    rng = np.random.default_rng(6)
    topk = np.array([rng.choice(16, 4, replace=False) for _ in range(1500)])
    table = mf.SubsetTable.from_topk(topk, num_experts=16)
    topology = Topology.preset("h800_normal", gpus_per_node=2)
    model = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)
    kw = {"objective": "batch", "batch_size": 32, "cost_model": model, "max_evaluations": 200}
    compute_only = mf.optimize(table, 4, 5, **kw)
    node_aware = mf.optimize(table, 4, 5, topology=topology, **kw)
    score = {"topology": topology, "cost_model": model, "batch_size": 32}

    # The compute-only result is one of the starts of the search with communication,
    # which is never worse than its best start on its two samples together.
    def both(p):
        return sample_batch_time(table, p, **score) + sample_batch_time(
            table, p, validation=True, **score
        )

    assert both(node_aware) <= both(compute_only)
    assert max(node_aware.slots_used) <= 5


@pytest.mark.parametrize("gpus_per_node", [-1, 0, 2**64, 1025, 2.0, True])
def test_a_topology_checks_its_node_size(gpus_per_node):
    with pytest.raises((ValueError, TypeError), match="gpus_per_node"):
        Topology.preset(gpus_per_node=gpus_per_node)
    free = Topology.free()
    with pytest.raises((ValueError, TypeError), match="gpus_per_node"):
        Topology(gpus_per_node, free.dispatch, free.combine)


def test_a_topology_checks_its_fields_types():
    free = Topology.free()
    with pytest.raises(TypeError, match="dispatch"):
        Topology(2, None, free.combine)
    with pytest.raises(TypeError, match="per_pair"):
        Topology(2, free.dispatch, free.combine, per_pair="yes")
    with pytest.raises(TypeError, match="latency_us"):
        Transfer(1.0, (0.0, 1.0), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="bytes_per_token"):
        Transfer(2**2000, (0.0, 1.0, 1.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"tokens": -1}, "tokens"),
        ({"k": 2**64}, "k"),
        ({"node_sum": -5}, "node_sum"),
        ({"num_gpus": 0}, "num_gpus"),
        ({"num_gpus": 2**70}, "num_gpus"),
    ],
)
def test_comm_us_refuses_counts_out_of_range(arguments, match):
    topology = Topology.preset(gpus_per_node=2)
    values = {"tokens": 4, "k": 2, "node_sum": 4, "num_gpus": 4, **arguments}
    with pytest.raises(ValueError, match=match):
        topology.comm_us(**values)
    assert topology.comm_us(4, 2, 4, 4) > 0


@pytest.mark.slow
def test_the_largest_batch_sample_is_refused_not_aborted(tmp_path):
    # batch_size = MAX_BATCH and the default 16 batches passed every check, then drew 2 x 8
    # GiB of ids: under a 6 GiB address space the process died (SIGABRT).
    script = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY))
        import moefast as mf
        from moefast.search.node import place_batch
        from moefast.topology.times import Topology
        table = mf.SubsetTable.from_topk([[0, 1], [2, 3]], 4)
        start = mf.Placement.from_lists([[0], [0], [1], [1]], 2)
        try:
            place_batch(table, [start], 4, topology=Topology.preset(gpus_per_node=2),
                        cost_model=mf.CostModel(1.0, 1.0), batch_size=1 << 24)
        except ValueError as err:
            print("ValueError:", err)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "sampled expert ids" in done.stdout
