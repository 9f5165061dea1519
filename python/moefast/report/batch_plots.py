"""Throughput-latency plots of simulated decode steps (the output of `moefast.simulate`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from moefast._util.atomic import save_figure

#: Throughput is shown in tokens per ms (the `moefast simulate` table's unit): the factor
#: from tokens per unit of the cost model's time, and the words.
_PER_MS = {"us": (1e3, "tokens per ms"), "ms": (1.0, "tokens per ms"), "s": (1e-3, "tokens per ms")}

#: Where a batch-size label may sit around its point (offset in points, alignment), tried
#: in this order until one overlaps no label already placed.
_LABEL_SPOTS = [
    ((6, -12), "left"),
    ((-6, 6), "right"),
    ((6, 6), "left"),
    ((-6, -12), "right"),
    ((0, 10), "center"),
    ((0, -16), "center"),
]


def throughput_unit(time_unit: str) -> tuple[float, str]:
    """The factor from tokens per ``time_unit`` to the plotted unit, and its words."""
    return _PER_MS.get(time_unit, (1.0, f"tokens per {time_unit}"))


def throughput_latency_figure(
    results_by_placement: Mapping[str, Sequence[Mapping[str, float]]],
    time_unit: str = "us",
    title: str = "Decode throughput vs latency",
):
    """One curve per placement: latency per token (mean step time) on x, throughput (tokens
    per ms for a cost model in us) on y, both logarithmic. Each batch size is labelled once,
    beside the highest of its points, in a spot where it overlaps no other label (a label
    that fits nowhere is left out: the curves' order of points still tells it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results_by_placement:
        raise ValueError("results_by_placement is empty: nothing to plot")
    factor, unit = throughput_unit(time_unit)
    fig, ax = plt.subplots(figsize=(7.5, 5.0), layout="constrained")
    spots: dict[int, tuple[float, float]] = {}
    for name, results in results_by_placement.items():
        rows = sorted(results, key=lambda r: r["batch_size"])
        if not rows:
            raise ValueError(f"placement {name!r} has no results")
        x = [r["latency_per_token"] for r in rows]
        y = [r["throughput"] * factor for r in rows]
        ax.plot(x, y, marker="o", label=name)
        for r, xi, yi in zip(rows, x, y, strict=True):
            b = int(r["batch_size"])
            if b not in spots or yi > spots[b][1]:
                spots[b] = (xi, yi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"latency per token = mean decode step time ({time_unit})")
    ax.set_ylabel(f"throughput ({unit})")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="placement")
    ax.margins(x=0.08, y=0.12)
    _label_batches(fig, ax, spots)
    return fig


def _label_batches(fig, ax, spots: Mapping[int, tuple[float, float]]) -> None:
    fig.canvas.draw()  # fixes the layout, so that label boxes are where they will be drawn
    renderer = fig.canvas.get_renderer()
    placed = [ax.get_legend().get_window_extent(renderer)]
    for b, point in sorted(spots.items()):
        for offset, align in _LABEL_SPOTS:
            text = ax.annotate(
                f"B={b}",
                point,
                textcoords="offset points",
                xytext=offset,
                ha=align,
                fontsize=7,
                color="black",
            )
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            text.remove()


def plot_throughput_latency(
    results_by_placement: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | Path,
    time_unit: str = "us",
    title: str = "Decode throughput vs latency",
) -> Path:
    """`throughput_latency_figure` written to a PNG (or any format matplotlib infers from
    ``path``)."""
    fig = throughput_latency_figure(results_by_placement, time_unit, title)
    import matplotlib.pyplot as plt

    path = Path(path)
    save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path
