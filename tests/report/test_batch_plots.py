"""moefast.report.batch_plots: the throughput/latency plot of simulated placements."""

import matplotlib.pyplot as plt
import moefast as mf
import numpy as np
import pytest
from moefast.report.batch_plots import plot_throughput_latency, throughput_latency_figure


def results():
    topk = np.random.default_rng(0).random((500, 8)).argsort(axis=1)[:, :2]
    cm = mf.CostModel(130, 0.5, 2.0)
    one = mf.Placement.from_lists([[e % 4] for e in range(8)], 4)
    two = mf.Placement.from_lists([[e % 4, (e + 1) % 4] for e in range(8)], 4)
    also_one = mf.Placement.from_lists([[(e + 1) % 4] for e in range(8)], 4)
    return {
        name: mf.simulate(topk, p, [1, 4, 16, 64, 256], cm, steps=50)
        for name, p in (("single", one), ("replicated", two), ("shifted", also_one))
    }


def test_plot_throughput_latency(tmp_path):
    out = plot_throughput_latency(results(), tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        plot_throughput_latency({}, tmp_path / "none.png")


def test_throughput_is_in_tokens_per_ms_as_in_the_table():
    data = results()
    fig = throughput_latency_figure(data)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "throughput (tokens per ms)"
    line = next(line for line in ax.get_lines() if line.get_label() == "single")
    np.testing.assert_allclose(line.get_ydata(), [1e3 * r["throughput"] for r in data["single"]])
    plt.close(fig)


def test_batch_labels_appear_once_and_never_overlap():
    # Curves that nearly coincide ("single" and "shifted"): one label per batch size.
    fig = throughput_latency_figure(results())
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t.get_text() for t in ax.texts]
    assert texts == sorted(set(texts), key=texts.index)  # no repeats
    assert {"B=1", "B=256"} <= set(texts)
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
    plt.close(fig)
