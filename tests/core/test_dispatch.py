"""Costs under a dispatch rule (`moefast._core.dispatch_costs`, `simulate_dispatch_steps`)
checked against plain Python: every combination of replica choices enumerated."""

from __future__ import annotations

import itertools

import moefast as mf
import moefast._core as core
import numpy as np
import pytest


def random_case(rng: np.random.Generator, experts: int, gpus: int, k: int, rows: int):
    replicas = np.zeros((experts, gpus), dtype=bool)
    replicas[np.arange(experts), rng.integers(gpus, size=experts)] = True
    extra = rng.random((experts, gpus)) < 0.25
    replicas |= extra
    topk = np.stack([rng.choice(experts, size=k, replace=False) for _ in range(rows)])
    return mf.Placement(replicas), mf.SubsetTable.from_topk(topk, num_experts=experts)


def max_load(gpus) -> int:
    return max(np.bincount(np.asarray(gpus)))


def random_map(rng, placement: mf.Placement, ranks: int) -> np.ndarray:
    lists = placement.to_lists()
    return np.array([[rng.choice(lists[e]) for e in range(len(lists))] for _ in range(ranks)])


@pytest.mark.parametrize("seed", range(6))
def test_static_and_uniform_costs_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    placement, table = random_case(rng, experts=10, gpus=4, k=4, rows=60)
    lists = placement.to_lists()
    ranks = int(rng.integers(1, 6))
    m = random_map(rng, placement, ranks)
    static = core.dispatch_costs(table, placement, m, 0)
    uniform = core.dispatch_costs(table, placement, None, 0)
    best = mf.subset_costs(table, placement)
    for row, subset in enumerate(table.subsets):
        want = np.mean([max_load(m[r, subset]) for r in range(ranks)])
        assert static[row] == pytest.approx(want, abs=1e-12)
        combos = list(itertools.product(*(lists[e] for e in subset)))
        assert uniform[row] == pytest.approx(np.mean([max_load(c) for c in combos]), abs=1e-12)
        # The best choice is the least of all combinations.
        assert best[row] == min(max_load(c) for c in combos)


def test_maps_must_send_experts_to_their_replicas():
    placement = mf.Placement.from_lists([[0], [1]], num_gpus=2)
    table = mf.SubsetTable.from_subsets([[0, 1]], [1.0], num_experts=2)
    with pytest.raises(ValueError, match="holds no replica"):
        core.dispatch_costs(table, placement, np.array([[1, 1]]), 0)
    with pytest.raises(ValueError, match="entries"):
        core.dispatch_costs(table, placement, np.array([[0, 1, 0]]), 0)


def test_without_replicas_every_rule_is_the_best_routing():
    rng = np.random.default_rng(4)
    topk = np.stack([rng.choice(12, size=3, replace=False) for _ in range(200)])
    placement = mf.Placement.from_lists([[e % 4] for e in range(12)], num_gpus=4)
    m = np.tile(np.arange(12) % 4, (4, 1))
    args = ([placement], [1, 8, 32], 30.0, 0.5, 1.5, 7, 40)
    best = core.simulate_steps(topk[:, None, :], None, *args)
    for rule in (m, None):
        got = core.simulate_dispatch_steps(
            topk[:, None, :], None, [placement], [rule], [1, 8, 32], 30.0, 0.5, 1.5, 7, 40
        )
        # The same batches are drawn, and with one replica per expert routing is forced.
        np.testing.assert_allclose(got, best, rtol=1e-12)


@pytest.mark.parametrize("ranks", [63, 64, 65, 130])
def test_static_costs_over_several_words_of_ranks(ranks):
    # Rank masks are 64 ranks to a word: maps of more ranks than one word holds, most
    # experts with replicas that the ranks split between.
    rng = np.random.default_rng(ranks)
    placement, table = random_case(rng, experts=12, gpus=5, k=5, rows=80)
    m = random_map(rng, placement, ranks)
    static = core.dispatch_costs(table, placement, m, 0)
    for row, subset in enumerate(table.subsets):
        want = np.mean([max_load(m[r, subset]) for r in range(ranks)])
        assert static[row] == pytest.approx(want, abs=1e-12)
