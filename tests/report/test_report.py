"""Report pieces that need no optimizer: co-activation, pair ranking, tables and plots."""

from __future__ import annotations

import itertools

import moefast
import numpy as np
import pytest
from moefast.evaluate.coactivation import coactivation, top_pairs
from moefast.evaluate.learning_curve import LearningCurve
from moefast.evaluate.methods import compare_methods
from moefast.evaluate.slot_sweep import default_slots
from moefast.report import report
from moefast.report.text_tables import comparison_rows, markdown_table
from moefast.trace import Trace


def table():
    topk = np.array([[0, 1, 2]] * 5 + [[0, 1, 3]] * 3 + [[2, 3, 4]] * 2)
    return moefast.SubsetTable.from_topk(topk, 6)


def test_coactivation_counts_pairs():
    t = table()
    matrix = coactivation(t)
    expected = np.zeros((6, 6))
    for subset, w in zip(t.subsets.tolist(), t.weights, strict=True):
        for i, j in itertools.product(subset, subset):
            expected[i, j] += w
    np.testing.assert_allclose(matrix, expected)
    np.testing.assert_allclose(np.diag(matrix), t.expert_load())


def test_top_pairs_rank_by_share():
    pairs = top_pairs(table(), 2)
    assert pairs[0][:3] == (0, 1, pytest.approx(0.8))
    uniform = 3 * 2 / (6 * 5)
    assert pairs[0][3] == pytest.approx(0.8 / uniform)
    assert pairs[1][2] <= pairs[0][2]


def comparison():
    rng = np.random.default_rng(0)
    topk = np.stack([rng.permutation(8)[:2] for _ in range(200 * 2)]).reshape(200, 2, 2)
    trace = Trace(topk, 8, [1, 2])
    tables = trace.tables()
    spread = np.zeros((8, 4), dtype=bool)
    spread[np.arange(8), np.arange(8) % 4] = True
    packed = np.zeros((8, 4), dtype=bool)
    packed[np.arange(8), np.arange(8) // 2] = True
    main = {"greedy": [moefast.Placement(spread)] * 2}
    comp = compare_methods(tables, trace.layer_ids, 4, 2, main=main, methods=())
    comp.costs["contiguous"] = np.array(
        [moefast.expected_cost(t, moefast.Placement(packed)) for t in tables]
    )
    return tables, comp


def test_comparison_rows_and_gain():
    _tables, comp = comparison()
    header, rows = comparison_rows(comp)
    assert header == [
        "layer",
        "contiguous",
        "greedy",
        "best bound",
        "gap to bound",
        "in-sample gain",
    ]
    np.testing.assert_allclose(comp.gap(), comp.costs["greedy"] / comp.lower_bounds - 1)
    assert rows[0][4] == f"{100 * comp.gap()[0]:.1f}%"
    expected_gain = (comp.costs["contiguous"] - comp.costs["greedy"]) / comp.costs["contiguous"]
    np.testing.assert_allclose(comp.gain(), expected_gain)
    assert rows[0][-1] == f"{100 * expected_gain[0]:.1f}%"
    assert rows[-1][0] == "total"
    assert "| layer | contiguous |" in markdown_table(header, rows)


def test_write_report_makes_markdown_and_plots(tmp_path):
    tables, comp = comparison()
    sweep = (np.array([2, 4, 8]), {"greedy": np.array([1.2, 1.1, 1.0])}, np.ones(3))
    curve = LearningCurve(
        [10, 20, 40, 80], [0.01, 0.03, 0.05, 0.055], [(0.0, 0.02)] * 4, 0.005, None, "held-out"
    )
    path = report.write_report(
        tmp_path, "test", {"GPUs": 4}, comp, (tables[0], 1), (sweep, "held-out: x"), 4, curve
    )
    text = path.read_text()
    for name in ("coactivation.png", "layer_costs.png", "slot_sweep.png", "learning_curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in text
    assert "- GPUs: 4" in text
    assert "## Expected cost per layer (in-sample)" in text
    assert "against slots per GPU (held-out)" in text
    assert "Held-out gain flat" in text
    assert "slots are marked" not in text  # no chosen slots given


def test_default_slots_leave_room_for_replicas():
    assert default_slots(32, 4) == 10
    assert default_slots(256, 32) == 10
