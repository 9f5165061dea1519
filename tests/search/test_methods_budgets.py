"""Search budgets of the greedy: `work_budget` (rows read, deterministic) and
`time_budget` (seconds, anytime), for `optimize` and a whole `plan`."""

from __future__ import annotations

import moefast as mf
import numpy as np
import pytest
from moefast.io.synthetic import synthetic_topk
from support.reference import expected_cost_ref


@pytest.fixture(scope="module")
def table():
    return mf.SubsetTable.from_topk(synthetic_topk(20_000, 32, 4, seed=3), 32)


def test_work_budget_is_deterministic_and_complete(table):
    free = mf.optimize(table, 4, 10, seed=2)
    free_cost = mf.expected_cost(table, free)
    eplb = mf.expected_cost(table, mf.optimize(table, 4, 10, method="eplb"))
    for rows in (0, 50_000, 500_000):
        a = mf.optimize(table, 4, 10, seed=2, work_budget=rows)
        assert a == mf.optimize(table, 4, 10, seed=2, work_budget=rows)
        assert a.slots_used.tolist() == [10] * 4
        cost = mf.expected_cost(table, a)
        # Exact costs: checked against the plain Hall formula on the heaviest rows.
        top = slice(0, 50)
        sub = mf.SubsetTable.from_subsets(table.subsets[top], table.weights[top], 32)
        assert mf.expected_cost(sub, a) == pytest.approx(
            expected_cost_ref(sub.subsets, sub.weights, a.replicas)
        )
        assert cost <= eplb
    # What the greedy leaves of a budget goes to the iterated local search after it.
    more = mf.optimize(table, 4, 10, seed=2, work_budget=10**7)
    assert mf.expected_cost(table, more) < free_cost
    assert free_cost <= eplb


def test_time_budget_returns_a_complete_placement(table):
    for seconds in (0, 0.05):
        p = mf.optimize(table, 4, 10, time_budget=seconds)
        assert p.slots_used.tolist() == [10] * 4
        assert p.replicas.any(axis=1).all()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"time_budget": -1.0}, ValueError, "time_budget"),
        ({"time_budget": float("nan")}, ValueError, "time_budget"),
        ({"time_budget": float("inf")}, ValueError, "time_budget"),
        ({"time_budget": True}, TypeError, "time_budget"),
        ({"time_budget": "1"}, TypeError, "time_budget"),
        ({"work_budget": -1}, ValueError, "work_budget"),
        ({"work_budget": 1.5}, TypeError, "work_budget"),
    ],
)
def test_bad_budgets_raise(table, options, error, match):
    with pytest.raises(error, match=match):
        mf.optimize(table, 4, 10, **options)
    with pytest.raises(error, match=match):
        mf.plan([table], 4, 10, **options)


def test_plan_budgets(table):
    rng = np.random.default_rng(0)
    topk = np.stack([rng.permutation(32)[table.subsets[:3000]] for _ in range(3)], axis=1)
    trace = mf.Trace(topk, 32)
    a = mf.plan(trace, 4, 10, work_budget=30_000, progress=False)
    b = mf.plan(trace, 4, 10, work_budget=30_000, progress=False)
    assert [p == q for p, q in zip(a, b, strict=True)] == [True] * 3
    assert a.settings["work_budget"] == 30_000
    timed = mf.plan(trace, 4, 10, time_budget=0.0, progress=False)
    assert all(p.slots_used.tolist() == [10] * 4 for p in timed)
    assert timed.settings["time_budget"] == 0.0


def test_plan_time_budget_keeps_a_reserve_for_the_scoring():
    from moefast.planning.plan import layers_budget

    # As long as the tables took, at most half the budget, is kept for the scoring.
    assert layers_budget(8.0, 0.0) == 8.0
    assert layers_budget(8.0, 1.0) == 6.0
    assert layers_budget(8.0, 3.0) == 2.0
    assert layers_budget(8.0, 5.0) == 0.0
    assert layers_budget(8.0, 20.0) == 0.0
