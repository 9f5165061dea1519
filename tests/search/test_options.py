"""`Objective` and `Budget`, and `optimize`'s older keywords: the same placements, one
DeprecationWarning per call naming them, none from the current form."""

from __future__ import annotations

import warnings

import moefast as mf
import pytest
from moefast.topology.times import Topology
from support.workloads import skewed_table

CM = mf.CostModel(130.0, 0.5)


def test_objective_fields_are_checked():
    assert mf.Objective().kind == "decode"
    assert mf.Objective(cost_model=CM).cost_model is CM  # a serving profile's step times
    assert mf.Objective("batch", 16, CM).batch_size == 16
    with pytest.raises(ValueError, match="unknown objective 'latency'"):
        mf.Objective("latency")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size, cost_model need objective='batch'"):
        mf.Objective(batch_size=8, cost_model=CM)
    with pytest.raises(ValueError, match="objective='batch' needs batch_size and cost_model"):
        mf.Objective("batch", 8)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        mf.Objective("batch", 0, CM)
    with pytest.raises(TypeError, match=r"cost_model must be a moefast\.CostModel"):
        mf.Objective("batch", 8, (130.0, 0.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_batches must be at least 1"):
        mf.Objective("batch", 8, CM, num_batches=0)
    with pytest.raises(ValueError, match="max_evaluations must be at least 0"):
        mf.Objective("batch", 8, CM, max_evaluations=-1)


def test_budget_fields_are_checked():
    assert mf.Budget(work_budget=5).work_budget == 5
    with pytest.raises(ValueError, match="time_limit must be positive"):
        mf.Budget(time_limit=0)
    with pytest.raises(ValueError, match="time_budget must be finite and non-negative"):
        mf.Budget(time_budget=-1)
    with pytest.raises(TypeError, match="work_budget must be an int"):
        mf.Budget(work_budget=1.5)  # type: ignore[arg-type]


def _new_form_is_silent(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_old_keywords_give_the_same_placements_with_one_warning():
    table = skewed_table(16, 16, 4, tokens=800)
    topo = Topology.preset(gpus_per_node=2)
    served = mf.optimize(table, 4, 4, method="contiguous")
    cases = [  # (old form's args, kwargs), (new form's args, kwargs), names warned of
        (((), dict(num_gpus=4, slots_per_gpu=4)), ((mf.Cluster(4, 4),), {}), "num_gpus"),
        (
            ((4, 4), dict(topology=topo, work_budget=2000)),
            ((mf.Cluster(4, 4, topology=topo),), dict(budget=mf.Budget(work_budget=2000))),
            "topology, work_budget",
        ),
        (
            ((4, 4), dict(current=served, max_moves=3, objective="decode")),
            ((4, 4), dict(moves=mf.MoveBudget(served, max_moves=3))),
            "current, max_moves, objective",
        ),
        (
            ((4, 4), dict(objective="batch", batch_size=8, cost_model=CM, max_evaluations=200)),
            ((4, 4), dict(objective=mf.Objective("batch", 8, CM, max_evaluations=200))),
            "objective, batch_size, cost_model, max_evaluations",
        ),
    ]
    for (old_args, old), (new_args, new), names in cases:
        with pytest.warns(DeprecationWarning) as record:
            before = mf.optimize(table, *old_args, **old)
        assert len(record) == 1
        message = str(record[0].message)
        assert message.startswith("optimize(): deprecated keywords")
        assert all(name in message for name in names.split(", ")), message
        assert record[0].filename == __file__  # attributed to the caller
        after = _new_form_is_silent(lambda: mf.optimize(table, *new_args, **new))  # noqa: B023
        assert before == after


def test_old_keywords_beside_their_new_home_are_refused():
    table = skewed_table(5, 8, 2)
    with pytest.raises(TypeError, match="topology given beside a Cluster"):
        mf.optimize(table, mf.Cluster(2, 4), topology=Topology.preset(gpus_per_node=1))
    with pytest.raises(TypeError, match="work_budget given beside budget="):
        mf.optimize(table, 2, 4, budget=mf.Budget(), work_budget=10)
    with pytest.raises(TypeError, match="num_gpus is given twice"):
        mf.optimize(table, 2, num_gpus=2, slots_per_gpu=4)
    with pytest.raises(ValueError, match="max_moves needs current"):
        mf.optimize(table, 2, 4, max_moves=3)
    with pytest.raises(TypeError, match=r"budget must be a moefast\.Budget or None, got dict"):
        mf.optimize(table, 2, 4, budget={"work_budget": 10})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cost_model needs objective='batch'"):
        mf.optimize(table, 2, 4, objective=mf.Objective(cost_model=CM))
    with pytest.raises(TypeError, match="unexpected keyword argument 'slots'"):
        mf.optimize(table, 2, slots=4)  # type: ignore[call-arg]
