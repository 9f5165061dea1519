"""A price per copied replica where re-planning works (`copy_cost`): the node-aware decode
walk (us per token: `copy_cost` x `round_us`, one price or one per link) and the batch walk
(us of step time: `copy_cost` x `round_us` x `batch_size`). A huge price keeps the served
placement, every step of the walk gains more than its copies' price, a zero price changes
nothing, price and budget hold together, and bad prices are refused."""

from __future__ import annotations

import itertools
import math

import moefast as mf
import numpy as np
import pytest
from moefast.batch.times import simulate
from moefast.cli import main
from moefast.moves import CopyPrice, copies, copies_price, price_per_copy
from moefast.search.batch import optimize_batch
from moefast.search.node import place_walk
from moefast.topology.times import Topology, expected_time

TOPO = Topology.preset("h800_normal", gpus_per_node=4)
GPUS, SLOTS, EXPERTS = 8, 5, 32
MODEL = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)


def skewed_topk(rng, tokens: int, experts: int, k: int, hot: int) -> np.ndarray:
    p = np.r_[[5.0] * hot, [1.0] * (experts - hot)]
    return np.array([rng.choice(experts, k, replace=False, p=p / p.sum()) for _ in range(tokens)])


@pytest.fixture(scope="module")
def shifted():
    """A layer served for one workload, the workload it now sees, and its fresh plan."""
    rng = np.random.default_rng(3)
    before = mf.SubsetTable.from_topk(skewed_topk(rng, 1500, EXPERTS, 4, 6), num_experts=EXPERTS)
    ids = (skewed_topk(rng, 1500, EXPERTS, 4, 6) + 11) % EXPERTS
    after = mf.SubsetTable.from_topk(ids, num_experts=EXPERTS)
    served = mf.optimize(before, GPUS, SLOTS, topology=TOPO)
    fresh = mf.optimize(after, GPUS, SLOTS)
    return before, after, served, fresh


def walk(shifted, **options):
    _, after, served, fresh = shifted
    return place_walk(after, served, SLOTS, topology=TOPO, target=fresh, **options)


def plain_copies_price(current: np.ndarray, placement: np.ndarray, price: CopyPrice) -> float:
    """Each copy by its link, plainly: in node when `current` holds the expert on another
    GPU of the destination's node."""
    total = 0.0
    experts, gpus = current.shape
    for e, g in itertools.product(range(experts), range(gpus)):
        if placement[e, g] and not current[e, g]:
            node = range(g // 4 * 4, g // 4 * 4 + 4)
            total += price.in_node if current[e, list(node)].any() else price.across_nodes
    return total


def test_a_huge_price_keeps_the_served_placement(shifted):
    _, after, served, _ = shifted
    placement, moved, path = walk(shifted, copy_cost=1e6)
    assert moved == 0 and np.array_equal(placement.replicas, served.replicas)
    assert len(path) == 1
    got = mf.optimize(after, GPUS, SLOTS, current=served, topology=TOPO, copy_cost=1e6)
    assert copies(served, got) == 0


def test_each_step_gains_more_than_its_copies_price(shifted):
    _, after, served, _ = shifted
    _, free_moved, free_path = walk(shifted)
    # Half the mean gain per copy of the unpriced walk, in rounds per token.
    gain_us = free_path[0][1] - free_path[-1][1]
    copy_cost = gain_us / free_moved / 2 / 47.0
    for max_moves in (None, 4):
        placement, moved, path = walk(shifted, copy_cost=copy_cost, max_moves=max_moves)
        assert 0 < moved < free_moved and moved <= (max_moves or moved)
        assert moved == copies(served, placement)

        def net(point):
            return point[1] + copy_cost * 47.0 * point[0]

        for a, b in itertools.pairwise(path):
            assert net(b) < net(a), (a, b)
            assert b[0] <= (max_moves or b[0])
        assert path[-1][1] == pytest.approx(expected_time(after, placement, TOPO))


def test_a_zero_price_changes_nothing(shifted):
    _, after, served, _ = shifted
    for max_moves in (None, 3):
        a = walk(shifted, max_moves=max_moves)
        b = walk(shifted, max_moves=max_moves, copy_cost=0.0)
        assert np.array_equal(a[0].replicas, b[0].replicas) and a[1:] == b[1:]
    x = mf.optimize(after, GPUS, SLOTS, current=served, topology=TOPO, max_moves=3)
    y = mf.optimize(after, GPUS, SLOTS, current=served, topology=TOPO, max_moves=3, copy_cost=0)
    assert np.array_equal(x.replicas, y.replicas)
    options = dict(objective="batch", batch_size=8, cost_model=MODEL, num_batches=16)
    x = mf.optimize(after, GPUS, SLOTS, current=served, max_moves=3, **options)
    y = mf.optimize(after, GPUS, SLOTS, current=served, max_moves=3, copy_cost=0.0, **options)
    assert np.array_equal(x.replicas, y.replicas)


def test_copies_are_priced_by_the_link_they_cross(shifted):
    _, after, served, fresh = shifted
    # 44 MB over the preset's NVLink (156 GB/s) and RDMA (51.5 GB/s) dispatch bandwidths.
    assert TOPO.copy_us(44e6) == pytest.approx((44e6 / 156e3, 44e6 / 51.5e3))
    price = TOPO.copy_price(44e6, 1e6)
    assert price.in_node == pytest.approx(44e6 / 156e3 / 47.0 / 1e6)
    assert price.across_nodes == pytest.approx(price_per_copy(44e6, 51.5, 1e6))
    # Copies inside a node free, across nodes dear: only copies from the same node.
    dear = CopyPrice(0.0, 1e6)
    placement, moved, _ = walk(shifted, copy_cost=dear)
    assert moved > 0
    assert plain_copies_price(served.replicas, placement.replicas, dear) == 0.0
    for p in (placement, fresh):
        for link in (price, CopyPrice(1.0, 3.0)):
            want = plain_copies_price(served.replicas, p.replicas, link)
            assert copies_price(served, p, link, 4) == pytest.approx(want)
    got = mf.optimize(after, GPUS, SLOTS, current=served, topology=TOPO, copy_cost=dear)
    assert plain_copies_price(served.replicas, got.replicas, dear) == 0.0


def test_batch_replanning_takes_a_price(shifted):
    _, after, served, _ = shifted
    options = dict(objective="batch", batch_size=8, cost_model=MODEL, num_batches=16)
    huge = mf.optimize(after, GPUS, SLOTS, current=served, copy_cost=1e6, **options)
    assert np.array_equal(huge.replicas, served.replicas)
    free = optimize_batch(after, served, SLOTS, MODEL, 8, num_batches=128, max_moves=40)
    n_free = copies(served, free)

    def step(p):
        (r,) = simulate(after, p, [8], MODEL, seed=0, steps=1000)
        return r["mean_step_time"]

    gain = step(served) - step(free)
    assert gain > 0 and n_free > 2
    # Half the mean gain per copy (us of step time), as rounds per token: / (47 us x 8).
    copy_cost = gain / n_free / 2 / (47.0 * 8)
    for max_moves in (None, 2):
        p = optimize_batch(
            after,
            served,
            SLOTS,
            MODEL,
            8,
            num_batches=128,
            max_moves=max_moves,
            copy_cost=copy_cost,
        )
        n = copies(served, p)
        # The walk's sample is not the simulation's: its net gain is checked in the core.
        assert 0 < n <= min(n_free, max_moves or n_free)
        assert step(p) < step(served)
        q = mf.optimize(
            after, GPUS, SLOTS, current=served, max_moves=max_moves, copy_cost=copy_cost, **options
        )
        assert copies(served, q) <= (max_moves or n_free + 40)


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_bad_prices_are_refused(shifted, bad):
    _, after, served, _ = shifted
    with pytest.raises(ValueError, match="copy_cost"):
        mf.optimize(after, GPUS, SLOTS, current=served, topology=TOPO, copy_cost=bad)
    with pytest.raises(ValueError, match="copy_cost"):
        mf.optimize(
            after,
            GPUS,
            SLOTS,
            current=served,
            copy_cost=bad,
            objective="batch",
            batch_size=8,
            cost_model=MODEL,
        )
    with pytest.raises(ValueError, match="copy_cost"):
        walk(shifted, copy_cost=bad)
    with pytest.raises(ValueError, match=r"copy_cost\.across_nodes"):
        CopyPrice(0.1, bad)


def test_batch_with_a_topology_refuses_a_price_by_link(shifted):
    # Batch re-planning with a topology takes one price per copy (tests in
    # test_replan_topology_batch.py); a CopyPrice by link is for the decode walk.
    _, after, served, _ = shifted
    with pytest.raises(ValueError, match="is for the decode node-aware re-plan"):
        mf.optimize(
            after,
            GPUS,
            SLOTS,
            current=served,
            copy_cost=CopyPrice(0.0, 0.01),
            topology=TOPO,
            objective="batch",
            batch_size=8,
            cost_model=MODEL,
        )


def test_cli_prices_copies_with_a_topology(tmp_path, capsys):
    before = mf.synthetic_trace(1500, EXPERTS, 4, 2, seed=1, layer_ids=[3, 5])
    after = mf.synthetic_trace(1500, EXPERTS, 4, 2, seed=2, layer_ids=[3, 5])
    served = mf.plan(before, GPUS, SLOTS, holdout=0, topology=TOPO)
    served.save(tmp_path / "served.json", "json")
    after.save(tmp_path / "after.npz")
    base = ["plan", str(tmp_path / "after.npz"), "--gpus", str(GPUS), "--slots", str(SLOTS)]
    base += ["--current", str(tmp_path / "served.json"), "--holdout", "0"]
    base += ["--topology", "h800_normal", "--gpus-per-node", "4"]
    copies_at = {}
    for price in ("0", "0.002", "1000"):
        out = tmp_path / f"new_{price}.json"
        args = [*base, "--copy-cost", price, "--out", str(out), "--format", "json"]
        assert main(args) == 0
        text = capsys.readouterr().out
        assert "gain against moves" in text and f"copy cost {float(price)}" in text
        assert "mean cost (us per token" in text
        summary = mf.load_placement(out).settings["replan"]
        assert summary["copy_cost"] == float(price)
        copies_at[price] = sum(summary["copies"])
    assert copies_at["1000"] == 0 < copies_at["0.002"] <= copies_at["0"]


def test_move_budget_fields_are_checked():
    table = mf.synthetic_trace(400, num_experts=8, k=2, num_layers=2, seed=0).tables()
    served = [mf.optimize(t, 2, 4) for t in table]
    model = mf.ModelPlacement(served, slots_per_gpu=4)
    for current in (served[0], served, model):
        assert mf.MoveBudget(current, max_moves=2).current is current
    assert mf.MoveBudget(served[0], copy_cost=CopyPrice(0.1, 0.2)).copy_cost == CopyPrice(0.1, 0.2)
    for bad in (served[0].replicas, [], "placement.json", [served[0], None]):
        with pytest.raises(TypeError, match=r"current must be a moefast\.Placement"):
            mf.MoveBudget(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_moves must be at least 0"):
        mf.MoveBudget(served[0], max_moves=-1)
    with pytest.raises(TypeError, match="max_moves must be an int"):
        mf.MoveBudget(served[0], max_moves=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="copy_cost must be finite and non-negative"):
        mf.MoveBudget(served[0], copy_cost=-0.5)
    with pytest.raises(TypeError, match=r"current must be a moefast\.Placement, got list"):
        mf.optimize(table[0], 2, 4, moves=mf.MoveBudget(served))  # a model's, not a layer's
