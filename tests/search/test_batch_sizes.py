"""The batch-aware searches of several sizes chained (`optimize_batch_sizes`) against the
plain loop of `fastest_placement` and `optimize_batch` they stand for, and the profile's
searches of every layer (`batch_searches`)."""

from __future__ import annotations

import moefast as mf
import pytest
from moefast.planning.profile import batch_searches
from moefast.search.batch import fastest_placement, optimize_batch, optimize_batch_sizes

CM = mf.CostModel(18.0, 0.02, 1.05)


def test_each_size_starts_from_the_fastest_of_the_starts_and_the_smaller_sizes():
    trace = mf.synthetic_trace(3000, num_experts=16, k=4, num_layers=1, seed=4)
    (table,) = trace.tables()
    starts = [mf.optimize(table, 4, 5), mf.optimize(table, 4, 5, method="eplb")]
    found = optimize_batch_sizes(table, starts, 5, CM, [32, 8], seed=3, max_evaluations=300)
    candidates, plain = list(starts), []
    for b in (8, 32):  # ascending, whatever the order asked
        start = fastest_placement(table, candidates, CM, b, seed=3)
        plain.append(optimize_batch(table, start, 5, CM, b, seed=3, max_evaluations=300))
        candidates.append(plain[-1])
    assert found == plain
    assert all(p.slots_used.tolist() == [5] * 4 for p in found)
    with pytest.raises(ValueError, match="starts is empty"):
        optimize_batch_sizes(table, [], 5, CM, [8])


def test_profile_searches_give_every_size_one_placement_per_layer():
    trace = mf.synthetic_trace(2000, num_experts=16, k=4, num_layers=3, seed=5)
    tables = trace.tables()
    starts = [[mf.optimize(t, 4, 5) for t in tables]]
    found = batch_searches(tables, starts, 5, CM, [64, 16], coverage=0.95, max_evaluations=200)
    assert sorted(found) == [16, 64]
    for layers in found.values():
        assert len(layers) == 3
        assert all(p.slots_used.tolist() == [5] * 4 for p in layers)
    # Layer by layer, the same searches on the pruned tables.
    pruned = [t.prune(coverage=0.95) for t in tables]
    for i, table in enumerate(pruned):
        alone = optimize_batch_sizes(table, [starts[0][i]], 5, CM, [16, 64], max_evaluations=200)
        assert [found[16][i], found[64][i]] == alone


def test_larger_sizes_get_fewer_moves_for_the_same_work():
    from moefast.planning.profile import (
        BATCH_SEARCH_EVALUATIONS,
        MIN_BATCH_EVALUATIONS,
        size_evaluations,
    )
    from moefast.search.batch import DEFAULT_BATCH_EVALUATIONS

    many = size_evaluations([16, 64, 256], 8, 256, 58)
    assert many[0] == BATCH_SEARCH_EVALUATIONS // 58
    assert many[0] > many[1] > many[2] >= MIN_BATCH_EVALUATIONS
    # Work per size: moves x sampled tokens (8,192 at these sizes) x share of batches touched.
    work = [m * (1 - (1 - 8 / 256) ** b) for m, b in zip(many, (16, 64, 256), strict=True)]
    assert max(work) / min(work) < 1.01
    # A small model keeps the search's own bound; a starved size keeps the floor.
    assert size_evaluations([16, 64], 4, 16, 1) == [DEFAULT_BATCH_EVALUATIONS] * 2
    assert size_evaluations([2, 512], 8, 64, 500)[1] == MIN_BATCH_EVALUATIONS
    # One bound per size reaches each search (`optimize_batch_sizes`).
    trace = mf.synthetic_trace(1500, num_experts=16, k=4, num_layers=1, seed=6)
    (table,) = trace.tables()
    start = mf.optimize(table, 4, 5)
    with pytest.raises(ValueError, match="2 bounds in max_evaluations for 1 batch sizes"):
        optimize_batch_sizes(table, [start], 5, CM, [8], max_evaluations=[10, 20])
    zero = optimize_batch_sizes(table, [start], 5, CM, [8, 16], max_evaluations=[0, 0])
    assert zero == [start, start]
