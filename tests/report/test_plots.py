"""moefast.report.plots: what the figures draw (bars for one layer, the chosen slots, the
serving profile's candidates), read back from the matplotlib objects."""

from __future__ import annotations

import matplotlib.pyplot as plt
import moefast
import numpy as np
from matplotlib.container import BarContainer
from moefast.evaluate.methods import compare_methods
from moefast.evaluate.serving import ServingScores
from moefast.evaluate.slot_sweep import slot_sweep
from moefast.report import report
from moefast.report.plots import layer_costs_figure, serving_figure, slot_sweep_figure
from moefast.trace import Trace


def _comparison(num_layers: int):
    rng = np.random.default_rng(0)
    topk = np.stack([rng.permutation(8)[:2] for _ in range(200 * num_layers)])
    trace = Trace(topk.reshape(200, num_layers, 2), 8, list(range(3, 3 + num_layers)))
    tables = trace.tables()
    main = {"greedy": [moefast.optimize(t, 4, 2) for t in tables]}
    return tables, compare_methods(
        tables, trace.layer_ids, 4, 2, main=main, methods=("contiguous", "eplb")
    )


def test_one_layer_draws_one_bar_per_method():
    _, comp = _comparison(1)
    fig = layer_costs_figure(comp)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 1
    heights = [patch.get_height() for patch in bars[0]]
    np.testing.assert_allclose(heights, [v[0] for v in comp.costs.values()])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["greedy", "contiguous", "EPLB"]
    assert ax.get_ylim()[0] == 0  # bars start at zero
    assert "layer 3" in ax.get_title()
    plt.close(fig)


def test_several_layers_draw_lines_over_the_layers():
    _, comp = _comparison(3)
    fig = layer_costs_figure(comp)
    ax = fig.axes[0]
    assert not ax.containers
    greedy = next(line for line in ax.get_lines() if line.get_label() == "greedy")
    np.testing.assert_array_equal(greedy.get_xdata(), [3, 4, 5])
    np.testing.assert_allclose(greedy.get_ydata(), comp.costs["greedy"])
    plt.close(fig)


def test_slot_sweep_marks_the_chosen_slots():
    slots = np.array([2, 4, 6, 8])
    costs = {"greedy": np.array([1.5, 1.2, 1.1, 1.0]), "eplb": np.array([1.8, 1.4, 1.2, 1.0])}
    fig = slot_sweep_figure(slots, costs, np.ones(4), 4, "held-out", chosen=4)
    ax = fig.axes[0]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1
    np.testing.assert_array_equal(stars[0].get_xdata(), [4, 4])
    np.testing.assert_allclose(stars[0].get_ydata(), [1.2, 1.4])
    vline = next(line for line in ax.get_lines() if line.get_label().startswith("chosen"))
    assert list(vline.get_xdata()) == [4, 4]
    assert vline.get_label() == "chosen: 4 slots per GPU"
    plt.close(fig)
    # Off the sweep's points: the line alone.
    fig = slot_sweep_figure(slots, costs, np.ones(4), 4, chosen=5)
    assert not [line for line in fig.axes[0].get_lines() if line.get_marker() == "*"]
    assert any(line.get_label().startswith("chosen") for line in fig.axes[0].get_lines())
    plt.close(fig)


def test_slot_sweep_includes_the_chosen_slots():
    tables, _ = _comparison(1)
    plain, _, _ = slot_sweep(tables, 4, ("contiguous",), points=3)
    slots, costs, bound = slot_sweep(tables, 4, ("contiguous",), points=3, include=3)
    assert 3 not in plain and list(slots) == sorted([*plain, 3])
    assert len(costs["contiguous"]) == len(bound) == len(slots)
    outside, _, _ = slot_sweep(tables, 4, ("contiguous",), points=3, include=99)
    assert list(outside) == list(plain)


def _serving_record():
    times = {
        "greedy": {1: 100.0, 16: 300.0, 64: 800.0},
        "EPLB": {1: 120.0, 16: 310.0, 64: 790.0},
        "engine default (slot p holds expert p % E)": {1: 150.0, 16: 400.0, 64: 900.0},
    }
    rounds = {name: np.array([1.2]) for name in times}
    scores = ServingScores(
        (1, 16, 64), (0.5, 0.25, 0.25), times, rounds, "held-out", "note", "CostModel(...)"
    )
    return scores.as_settings()


def test_serving_figure_draws_every_candidate_against_b():
    record = _serving_record()
    fig = serving_figure(record)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {
        "greedy (recommended)",
        "EPLB",
        "engine default (slot p holds expert p % E)",
    }
    np.testing.assert_array_equal(lines["EPLB"].get_xdata(), [1, 16, 64])
    np.testing.assert_allclose(lines["EPLB"].get_ydata(), [120.0, 310.0, 790.0])
    assert lines["greedy (recommended)"].get_linewidth() > lines["EPLB"].get_linewidth()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "16", "64"]
    assert ax.get_ylabel().endswith("(us)")
    plt.close(fig)


def test_report_shows_the_serving_profile(tmp_path):
    tables, comp = _comparison(1)
    path = report.write_report(
        tmp_path, "t", {}, comp, (tables[0], 3), None, 4, serving=_serving_record()
    )
    text = path.read_text()
    assert (tmp_path / "serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(serving.png)" in text
    assert "| greedy * | 1.200 | 100.0 | 300.0 | 800.0 |" in text
    assert "**recommended: greedy" in text


def test_report_says_the_chosen_slots_are_marked(tmp_path):
    tables, comp = _comparison(1)
    sweep = (np.array([2, 4]), {"greedy": np.array([1.2, 1.0])}, np.ones(2))
    path = report.write_report(
        tmp_path, "t", {}, comp, (tables[0], 3), (sweep, "in-sample: x"), 4, chosen_slots=4
    )
    assert "The plan's 4 slots are marked." in path.read_text()
