"""Report plots: each function takes computed arrays and only draws (matplotlib, Agg
backend, so no display is needed)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from moefast._core import SubsetTable
from moefast._util.atomic import save_figure
from moefast.evaluate.coactivation import coactivation
from moefast.evaluate.comparison import METHOD_LABELS, Comparison
from moefast.evaluate.learning_curve import LearningCurve

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


def _finish(plt, fig, ax, path: Path) -> None:
    """Grid, legend outside the data, saved without clipping."""
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_slot_sweep(
    slots: np.ndarray,
    costs: dict[str, np.ndarray],
    bound: np.ndarray,
    num_gpus: int,
    path: Path,
    basis: str = "in-sample",
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # Distinct markers and dashes keep methods with equal costs visible on top of each other.
    for (method, values), (marker, dash) in zip(costs.items(), itertools.cycle(_STYLES)):
        ax.plot(
            slots, values, marker=marker, linestyle=dash, label=METHOD_LABELS.get(method, method)
        )
    ax.plot(slots, bound, linestyle=(0, (1, 3)), color="black", label="lower bound")
    ax.set_xlabel(f"slots per GPU ({num_gpus} GPUs)")
    ax.set_ylabel("expected cost (expert rounds per token per layer)")
    ax.set_title(f"Expected cost against GPU memory ({basis})")
    _finish(plt, fig, ax, path)


def plot_layer_costs(comparison: Comparison, path: Path) -> None:
    plt = _pyplot()
    layers = np.array(comparison.layer_ids)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.3 * len(layers) + 3), 4.5))
    for (method, values), (marker, dash) in zip(comparison.costs.items(), itertools.cycle(_STYLES)):
        ax.plot(
            layers,
            values,
            marker=marker,
            markersize=4,
            linestyle=dash,
            label=METHOD_LABELS.get(method, method),
        )
    ax.plot(
        layers, comparison.lower_bounds, linestyle=(0, (1, 3)), color="black", label="lower bound"
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel("expected cost (expert rounds per token)")
    ax.set_title(f"Expected cost per layer ({comparison.basis})")
    _finish(plt, fig, ax, path)


def plot_learning_curve(curve: LearningCurve, path: Path) -> None:
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
    _finish(plt, fig, ax, path)
