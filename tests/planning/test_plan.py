"""moefast.planning.plan: `plan` over every layer of a Trace or a sequence of SubsetTable."""

import warnings

import moefast as mf
import numpy as np
import pytest
from moefast.io.synthetic import synthetic_trace

GPUS, SLOTS = 4, 5


@pytest.fixture(scope="module")
def trace() -> mf.Trace:
    return synthetic_trace(600, 16, 4, 3, seed=1, layer_ids=[3, 7, 11])


def test_plan_of_a_trace_is_optimize_on_each_pruned_layer(trace):
    # holdout=0: planned and scored on every token (held-out planning: tests/test_heldout.py).
    model = mf.plan(trace, GPUS, SLOTS, coverage=0.9, seed=2, progress=False, holdout=0)
    assert model.layer_ids == [3, 7, 11] and model.slots_per_gpu == SLOTS
    for layer, table in enumerate(trace.tables()):
        want = mf.optimize(table.prune(coverage=0.9), GPUS, SLOTS, seed=2)
        assert model[layer] == want
        # Costs are evaluated on the full table, not the pruned one.
        assert model.layer_costs[layer] == pytest.approx(mf.expected_cost(table, want))
        assert model.lower_bounds[layer] == pytest.approx(mf.lower_bound(table, GPUS, SLOTS))
        assert model.lower_bounds[layer] <= model.layer_costs[layer]
    assert model.settings["cost_basis"] == "in-sample"
    assert {k: model.settings[k] for k in ("method", "coverage", "seed", "num_gpus")} == {
        "method": "greedy",
        "coverage": 0.9,
        "seed": 2,
        "num_gpus": GPUS,
    }


def test_plan_of_tables_numbers_layers_from_zero(trace):
    tables = trace.tables()
    by_tables = mf.plan(tables, GPUS, SLOTS, method="eplb", coverage=1, progress=False)
    by_trace = mf.plan(trace, GPUS, SLOTS, method="eplb", coverage=1, progress=False, holdout=0)
    assert by_tables.layer_ids == [0, 1, 2]
    assert list(by_tables) == list(by_trace)
    assert mf.plan(tuple(tables), GPUS, SLOTS, progress=False).layer_ids == [0, 1, 2]


@pytest.mark.parametrize(
    "source, name",
    [
        (np.zeros((10, 2, 4), dtype=int), "ndarray"),
        ([], "list"),
        ([1.5], "list"),
    ],
)
def test_plan_refuses_what_is_not_a_trace_or_tables_by_type(source, name):
    """Strings are trace file paths (streamed): a missing one is named."""
    with pytest.raises(
        TypeError, match=f"expected a moefast.Trace or a non-empty sequence.*{name}"
    ):
        mf.plan(source, GPUS, SLOTS)


def test_duck_typed_traces_are_refused(trace):
    class LooksLikeATrace:
        topk, num_experts, layer_ids, weights = trace.topk, 16, trace.layer_ids, None

    with pytest.raises(TypeError, match="got LooksLikeATrace"):
        mf.plan(LooksLikeATrace(), GPUS, SLOTS)


def test_plan_checks_coverage_memory_and_layers(trace):
    with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\], got 2.0"):
        mf.plan(trace, GPUS, SLOTS, coverage=2)
    with pytest.raises(TypeError, match="coverage must be a real number, got str"):
        mf.plan(trace, GPUS, SLOTS, coverage="0.9")  # type: ignore[arg-type]  # under test
    with pytest.raises(ValueError, match="cannot hold 16 experts"):
        mf.plan(trace, 2, 5)
    mixed = [trace.table(0), mf.SubsetTable.from_topk(np.array([[0, 1, 2, 3]]), 20)]
    with pytest.raises(ValueError, match="same number of experts"):
        mf.plan(mixed, GPUS, SLOTS)
    with pytest.raises(TypeError, match="positional"):
        mf.plan(trace, GPUS, SLOTS, "eplb")  # type: ignore[misc]  # the check under test


@pytest.mark.slow
def test_batch_objective_is_recorded(trace):
    cm = mf.CostModel(130.0, 0.5)
    small = trace.select_layers([0])
    model = mf.plan(
        small,
        GPUS,
        SLOTS,
        objective="batch",
        batch_size=8,
        cost_model=cm,
        progress=False,
        holdout=0,
    )
    table = small.table(0)
    assert model[0] == mf.optimize(
        table.prune(coverage=0.99), GPUS, SLOTS, objective="batch", batch_size=8, cost_model=cm
    )
    assert model.settings["objective"] == "batch" and model.settings["batch_size"] == 8
    assert model.settings["cost_model"] == repr(cm)


def test_plan_names_a_missing_trace_file():
    with pytest.raises(FileNotFoundError, match=r"trace\.npz"):
        mf.plan("trace.npz", 4, 10)
    with pytest.raises(FileNotFoundError, match="a table"):
        mf.plan(["a table"], 4, 10)


def test_figures_of_a_synthetic_trace_say_so(trace):
    cm = mf.CostModel(100.0, 1.0)
    profile = mf.planning.profile.ServingProfile((1, 8), batch_aware=False, steps=16)
    model = mf.plan(trace, GPUS, SLOTS, method="eplb", profile=profile, cost_model=cm)
    assert model.settings["synthetic"] is True
    assert model.evaluation is not None
    mark = mf.trace.SYNTHETIC_MARK
    assert model.evaluation.headline().startswith(f"[{mark}] ")
    assert model.settings["serving"]["synthetic"] is True
    assert model.settings["serving"]["headline"].startswith(f"[{mark}] recommended: ")
    # The same tokens recorded: no mark anywhere.
    recorded = mf.Trace(trace.topk, trace.num_experts, trace.layer_ids)
    plain = mf.plan(recorded, GPUS, SLOTS, method="eplb", profile=profile, cost_model=cm)
    assert "synthetic" not in plain.settings and "synthetic" not in plain.settings["serving"]
    assert plain.evaluation is not None and mark not in plain.evaluation.headline()
    assert list(plain) == list(model)


def test_old_keywords_plan_the_same_with_one_warning():
    trace = synthetic_trace(num_tokens=600, num_experts=16, k=2, num_layers=2, seed=4)
    served = mf.plan(trace, 4, 4, method="contiguous", evaluation=mf.Evaluation(holdout=0))
    with pytest.warns(DeprecationWarning) as record:
        before = mf.plan(
            trace,
            num_gpus=4,
            slots_per_gpu=4,
            holdout=0.25,
            split_by="time",
            coverage=0.95,
            work_budget=3000,
            current=served,
            max_moves=3,
        )
    assert len(record) == 1 and record[0].filename == __file__
    message = str(record[0].message)
    for name in ("num_gpus", "holdout", "split_by", "coverage", "work_budget", "current"):
        assert name in message, message
    assert "evaluation=moefast.Evaluation(holdout=..., split_by=..., coverage=...)" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = mf.plan(
            trace,
            mf.Cluster(4, 4),
            evaluation=mf.Evaluation(holdout=0.25, split_by="time", coverage=0.95),
            budget=mf.Budget(work_budget=3000),
            moves=mf.MoveBudget(served, max_moves=3),
        )
    assert before.placements == after.placements
    assert before.settings == after.settings
    with pytest.raises(ValueError, match=r"plan takes no objective\.num_batches"):
        goal = mf.Objective("batch", 8, mf.CostModel(1, 1), num_batches=4)
        mf.plan(trace, 4, 4, objective=goal)
