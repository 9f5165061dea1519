"""Throughput-latency plots of simulated decode steps (the output of `moefast.simulate`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from moefast._util.atomic import save_figure


def plot_throughput_latency(
    results_by_placement: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | Path,
    time_unit: str = "us",
    title: str = "Decode throughput vs latency",
) -> Path:
    """One curve per placement: latency per token (mean step time) on x, throughput
    (tokens per unit of time) on y, each point labelled with its batch size. Both axes
    are logarithmic. Writes a PNG (or any format matplotlib infers from `path`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results_by_placement:
        raise ValueError("results_by_placement is empty: nothing to plot")
    fig, ax = plt.subplots(figsize=(7.5, 5.0), layout="constrained")
    for index, (name, results) in enumerate(results_by_placement.items()):
        rows = sorted(results, key=lambda r: r["batch_size"])
        if not rows:
            raise ValueError(f"placement {name!r} has no results")
        x = [r["latency_per_token"] for r in rows]
        y = [r["throughput"] for r in rows]
        (line,) = ax.plot(x, y, marker="o", label=name)
        for r, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(
                # Alternate sides per curve so labels of nearby points do not overlap.
                f"B={r['batch_size']}",
                (xi, yi),
                textcoords="offset points",
                xytext=(5, -11) if index % 2 == 0 else (-8, 6),
                ha="left" if index % 2 == 0 else "right",
                fontsize=7,
                color=line.get_color(),
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"latency per token = mean decode step time ({time_unit})")
    ax.set_ylabel(f"throughput (tokens per {time_unit})")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="placement")
    ax.margins(x=0.08, y=0.12)
    path = Path(path)
    save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path
