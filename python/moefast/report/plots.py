"""Report plots: each function takes computed arrays and only draws (matplotlib, Agg
backend, so no display is needed)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import SubsetTable
from moefast._util.atomic import save_figure
from moefast.evaluate.coactivation import coactivation
from moefast.evaluate.comparison import METHOD_LABELS, Comparison
from moefast.evaluate.learning_curve import LearningCurve
from moefast.evaluate.serving import record_dispatch, record_step_times

_STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_coactivation(table: SubsetTable, layer_id: int, path: Path) -> None:
    plt = _pyplot()
    matrix = coactivation(table) / table.total_weight
    np.fill_diagonal(
        matrix, np.nan
    )  # the diagonal is load, not co-activation: it would drown the scale
    size = min(9.0, 3.5 + 0.12 * table.num_experts)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(matrix, cmap="viridis", interpolation="nearest")
    ax.set_title(f"Co-activation of expert pairs, layer {layer_id}")
    ax.set_xlabel("expert")
    ax.set_ylabel("expert")
    fig.colorbar(image, ax=ax, label="share of tokens choosing both")
    fig.tight_layout()
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _decorate(ax, grid_axis: str = "both") -> None:
    """Grid and the legend outside the data."""
    ax.grid(alpha=0.3, axis=grid_axis)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.tight_layout()


def _save(fig, path: Path) -> None:
    """Saved without clipping, then closed."""
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def slot_sweep_figure(
    slots: np.ndarray,
    costs: dict[str, np.ndarray],
    bound: np.ndarray,
    num_gpus: int,
    basis: str = "in-sample",
    chosen: int | None = None,
):
    """The sweep's figure; ``chosen`` (the plan's slots per GPU) is marked by a vertical line
    and a star on each method's curve where the sweep has that point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # Distinct markers and dashes keep methods with equal costs visible on top of each other.
    for (method, values), (marker, dash) in zip(costs.items(), itertools.cycle(_STYLES)):
        ax.plot(
            slots, values, marker=marker, linestyle=dash, label=METHOD_LABELS.get(method, method)
        )
    ax.plot(slots, bound, linestyle=(0, (1, 3)), color="black", label="lower bound")
    if chosen is not None:
        ax.axvline(
            chosen, color="grey", linewidth=1.2, zorder=0, label=f"chosen: {chosen} slots per GPU"
        )
        at = np.flatnonzero(np.asarray(slots) == chosen)
        if len(at):
            ax.plot(
                [chosen] * len(costs),
                [values[at[0]] for values in costs.values()],
                linestyle="none",
                marker="*",
                markersize=13,
                color="black",
                zorder=5,
                label="cost at the chosen slots",
            )
    ax.set_xlabel(f"slots per GPU ({num_gpus} GPUs)")
    ax.set_ylabel("expected cost (expert rounds per token per layer)")
    ax.set_title(f"Expected cost against GPU memory ({basis})")
    _decorate(ax)
    return fig


def plot_slot_sweep(
    slots: np.ndarray,
    costs: dict[str, np.ndarray],
    bound: np.ndarray,
    num_gpus: int,
    path: Path,
    basis: str = "in-sample",
    chosen: int | None = None,
) -> None:
    _save(slot_sweep_figure(slots, costs, bound, num_gpus, basis, chosen), path)


def layer_costs_figure(comparison: Comparison):
    """Lines over the layers; for one layer, one bar per method with its value on top (a
    line through one point is a dot on an empty axis)."""
    plt = _pyplot()
    layers = np.array(comparison.layer_ids)
    labels = [METHOD_LABELS.get(m, m) for m in comparison.costs]
    if len(layers) == 1:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.5))
        heights = [float(v[0]) for v in comparison.costs.values()]
        colors = [f"C{i}" for i in range(len(heights))]
        bars = ax.bar(labels, heights, color=colors, width=0.6)
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
        ax.axhline(
            float(comparison.lower_bounds[0]),
            linestyle=(0, (1, 3)),
            color="black",
            label="lower bound",
        )
        ax.set_ylim(0, 1.12 * max([*heights, float(comparison.lower_bounds[0])]))
        ax.set_xlabel(f"method (layer {int(layers[0])})")
        ax.set_ylabel("expected cost (expert rounds per token)")
        ax.set_title(f"Expected cost, layer {int(layers[0])} ({comparison.basis})")
        _decorate(ax, grid_axis="y")
        return fig
    fig, ax = plt.subplots(figsize=(max(7.0, 0.3 * len(layers) + 3), 4.5))
    for (label, values), (marker, dash) in zip(
        zip(labels, comparison.costs.values(), strict=True), itertools.cycle(_STYLES)
    ):
        ax.plot(layers, values, marker=marker, markersize=4, linestyle=dash, label=label)
    ax.plot(
        layers, comparison.lower_bounds, linestyle=(0, (1, 3)), color="black", label="lower bound"
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel("expected cost (expert rounds per token)")
    ax.set_title(f"Expected cost per layer ({comparison.basis})")
    _decorate(ax)
    return fig


def plot_layer_costs(comparison: Comparison, path: Path) -> None:
    _save(layer_costs_figure(comparison), path)


def serving_figure(record: Mapping[str, Any]):
    """Every candidate's simulated step time against the batch size, from a serving record
    (`moefast.evaluate.serving.ServingScores.as_settings`); the recommended one drawn
    thicker and named in the legend."""
    plt = _pyplot()
    from matplotlib import ticker

    basis = record["basis"]
    sizes = [int(b) for b in record["profile"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, _entry), (marker, dash) in zip(
        record["candidates"].items(), itertools.cycle(_STYLES)
    ):
        times = record_step_times(record, name)
        best = name == record["recommended"]
        ax.plot(
            sizes,
            times,
            marker=marker,
            linestyle=dash,
            linewidth=2.6 if best else 1.3,
            label=name + (" (recommended)" if best else ""),
        )
    if len(sizes) > 1:
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")  # equal gaps read as equal ratios at every batch size
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("batch size B (tokens per decode step)")
    ax.set_ylabel("simulated step time, summed over layers (us)")
    ax.set_title(f"Step time of every candidate against B ({basis}, {record_dispatch(record)})")
    ax.grid(alpha=0.3, which="both")
    # Below the axes: candidate names (the engine's map) are long.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
    fig.tight_layout()
    return fig


def plot_serving(record: Mapping[str, Any], path: Path) -> None:
    _save(serving_figure(record), path)


def learning_curve_figure(curve: LearningCurve):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tokens = np.array(curve.train_tokens)
    gains = 100 * np.array(curve.gains)
    ax.plot(tokens, gains, marker="o", label="held-out gain over the best baseline")
    if all(i is not None for i in curve.intervals):
        low = [100 * i[0] for i in curve.intervals if i is not None]
        high = [100 * i[1] for i in curve.intervals if i is not None]
        ax.fill_between(tokens, low, high, alpha=0.2, label="bootstrap 95% interval")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out gain (%)")
    ax.set_title(f"Learning curve: {curve.verdict}")
    _decorate(ax)
    return fig


def plot_learning_curve(curve: LearningCurve, path: Path) -> None:
    _save(learning_curve_figure(curve), path)
