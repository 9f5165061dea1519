"""moefast.report.batch_plots: the throughput/latency plot of simulated placements."""

import moefast as mf
import numpy as np
import pytest
from moefast.report.batch_plots import plot_throughput_latency


def test_plot_throughput_latency(tmp_path):
    topk = np.random.default_rng(0).random((500, 8)).argsort(axis=1)[:, :2]
    cm = mf.CostModel(130, 0.5, 2.0)
    one = mf.Placement.from_lists([[e % 4] for e in range(8)], 4)
    two = mf.Placement.from_lists([[e % 4, (e + 1) % 4] for e in range(8)], 4)
    results = {
        name: mf.simulate(topk, p, [1, 16, 256], cm, steps=50)
        for name, p in (("single", one), ("replicated", two))
    }
    out = plot_throughput_latency(results, tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        plot_throughput_latency({}, tmp_path / "none.png")
