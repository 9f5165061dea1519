"""Topology, times with communication and re-planning with few moves (issue 14)."""

from __future__ import annotations

import itertools

import moefast as mf
import numpy as np
import pytest
from moefast.topology import Topology, batch_time, expected_time, place, subset_times


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
