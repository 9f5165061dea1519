"""Reports of a planning run: a Markdown summary and PNG plots.

The computations (`compare_methods`, `slot_sweep`, `coactivation`) return plain arrays so the
CLI can print them; the plot functions take those arrays and only draw. Plots use matplotlib's
Agg backend, so no display is needed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moefast._core import Placement, SubsetTable, expected_cost, lower_bound
from moefast.atomic import save_figure, write_text
from moefast.optimizers import optimize
from moefast.progress import progress

BASELINES = ("contiguous", "round_robin", "eplb")
METHOD_LABELS = {
    "contiguous": "contiguous",
    "round_robin": "round-robin",
    "eplb": "EPLB",
    "greedy": "greedy",
    "milp": "MILP",
}


def default_slots(num_experts: int, num_gpus: int) -> int:
    """A quarter more memory than one copy of every expert needs: room for hot replicas."""
    return math.ceil(1.25 * num_experts / num_gpus)


@dataclass
class Comparison:
    """Expected cost (expert rounds per token) of each method in each layer."""

    layer_ids: list[int]
    costs: dict[str, np.ndarray]  # method -> float [layers]
    lower_bounds: np.ndarray
    main_method: str = "greedy"
    placements: dict[str, list[Placement]] = field(default_factory=dict)

    @property
    def best_baseline(self) -> np.ndarray:
        """Per layer, the lowest cost among the baselines present (the main method left out)."""
        names = [m for m in BASELINES if m in self.costs and m != self.main_method]
        return np.min([self.costs[m] for m in names], axis=0)

    def gain(self) -> np.ndarray:
        """Per layer, the main method's relative saving over the best baseline (0.1 = 10%)."""
        best = self.best_baseline
        return (best - self.costs[self.main_method]) / best


def compare_methods(
    tables: Sequence[SubsetTable],
    layer_ids: Sequence[int],
    num_gpus: int,
    slots_per_gpu: int,
    main: dict[str, Sequence[Placement]] | None = None,
    methods: Sequence[str] = BASELINES,
    seed: int = 0,
) -> Comparison:
    """Cost of every layer under the baselines (computed here) and given placements (``main``),
    all evaluated on the full tables."""
    placed: dict[str, list[Placement]] = {m: list(p) for m, p in (main or {}).items()}
    for method in methods:
        if method in placed:
            continue
        placed[method] = [
            optimize(t, num_gpus, slots_per_gpu, method=method, seed=seed)
            for t in progress(tables, len(tables), method)
        ]
    costs = {
        m: np.array([expected_cost(t, p) for t, p in zip(tables, ps, strict=True)])
        for m, ps in placed.items()
    }
    bounds = np.array([lower_bound(t, num_gpus) for t in tables])
    main_method = next(iter(main)) if main else methods[0]
    return Comparison(list(layer_ids), costs, bounds, main_method, placed)


def slot_sweep(
    tables: Sequence[SubsetTable],
    num_gpus: int,
    methods: Sequence[str] = ("greedy", *BASELINES),
    points: int = 8,
    coverage: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Mean expected cost per layer against slots per GPU, from one copy of every expert
    (ceil(E/G)) to every GPU holding every expert (E). Placements are optimized on the subsets
    covering ``coverage`` of the tokens and evaluated on the full tables. Returns
    (slots [n], method -> cost [n], lower bound [n])."""
    num_experts = tables[0].num_experts
    low, high = math.ceil(num_experts / num_gpus), num_experts
    slots = np.unique(np.linspace(low, high, min(points, high - low + 1)).round().astype(int))
    costs = {m: np.zeros(len(slots)) for m in methods}
    work = [(i, s, m) for i, s in enumerate(slots) for m in methods]
    planned = tables if coverage >= 1 else [t.prune(coverage=coverage) for t in tables]
    for i, s, m in progress(work, len(work), "slot sweep"):
        costs[m][i] = np.mean(
            [
                expected_cost(t, optimize(p, num_gpus, int(s), method=m, seed=seed))
                for t, p in zip(tables, planned, strict=True)
            ]
        )
    bound = np.full(len(slots), np.mean([lower_bound(t, num_gpus) for t in tables]))
    return slots, costs, bound


def coactivation(table: SubsetTable) -> np.ndarray:
    """float [E, E]: weight of tokens picking both experts (diagonal: each expert's load)."""
    subsets, weights = table.subsets, table.weights
    e, k = table.num_experts, subsets.shape[1]
    pair_index = (subsets[:, :, None] * e + subsets[:, None, :]).reshape(len(subsets), k * k)
    flat = np.bincount(pair_index.ravel(), weights=np.repeat(weights, k * k), minlength=e * e)
    return flat.reshape(e, e)


def hottest_layer(tables: Sequence[SubsetTable]) -> int:
    """Position of the layer whose most frequent pair holds the largest share of its tokens."""
    shares = [pairs[0][2] if (pairs := top_pairs(t, 1)) else 0.0 for t in tables]
    return int(np.argmax(shares))


def top_pairs(table: SubsetTable, count: int = 5) -> list[tuple[int, int, float, float]]:
    """The ``count`` most co-activated pairs: (expert, expert, share of tokens,
    share / uniform share)."""
    matrix = coactivation(table)
    e, k = table.num_experts, table.k
    upper = np.triu(matrix, 1)
    order = np.argsort(upper, axis=None)[::-1][:count]
    uniform = k * (k - 1) / (e * (e - 1)) if e > 1 else 1.0
    pairs = []
    for flat in order:
        i, j = np.unravel_index(flat, upper.shape)
        share = upper[i, j] / table.total_weight
        if share <= 0:
            break
        pairs.append((int(i), int(j), float(share), float(share / uniform)))
    return pairs


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
    slots: np.ndarray, costs: dict[str, np.ndarray], bound: np.ndarray, num_gpus: int, path: Path
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
    ax.set_title("Expected cost against GPU memory")
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
    ax.set_title("Expected cost per layer")
    _finish(plt, fig, ax, path)


def comparison_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-layer table that the CLI prints and the report embeds."""
    methods = [m for m in BASELINES if m in comparison.costs] + [
        m for m in comparison.costs if m not in BASELINES
    ]
    header = ["layer", *(METHOD_LABELS.get(m, m) for m in methods), "lower bound"]
    rows = []
    has_baseline = any(m in comparison.costs for m in BASELINES if m != comparison.main_method)
    gains = (
        comparison.gain() if has_baseline and comparison.main_method in comparison.costs else None
    )
    for i, layer in enumerate(comparison.layer_ids):
        row = [
            str(layer),
            *(f"{comparison.costs[m][i]:.3f}" for m in methods),
            f"{comparison.lower_bounds[i]:.3f}",
        ]
        if gains is not None:
            row.append(f"{100 * gains[i]:.1f}%")
        rows.append(row)
    total = [
        "total",
        *(f"{comparison.costs[m].sum():.3f}" for m in methods),
        f"{comparison.lower_bounds.sum():.3f}",
    ]
    if gains is not None:
        best = comparison.best_baseline.sum()
        total.append(f"{100 * (best - comparison.costs[comparison.main_method].sum()) / best:.1f}%")
    rows.append(total)
    if gains is not None:
        header.append("gain")
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Plain-text columns for the terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    title: str,
    facts: dict[str, object],
    comparison: Comparison,
    heatmap: tuple[SubsetTable, int],
    sweep: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray] | None,
    num_gpus: int,
) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; returns the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table, layer_id = heatmap
    plot_coactivation(table, layer_id, out_dir / "coactivation.png")
    plot_layer_costs(comparison, out_dir / "layer_costs.png")
    if sweep is not None:
        plot_slot_sweep(*sweep, num_gpus, out_dir / "slot_sweep.png")
    header, rows = comparison_rows(comparison)
    main_label = METHOD_LABELS.get(comparison.main_method, comparison.main_method)
    lines = [f"# {title}", ""]
    lines += [f"- {name}: {value}" for name, value in facts.items()]
    lines += [
        "",
        "Costs are expected expert rounds per token (the number of experts the busiest GPU runs",
        f"one after the other), evaluated on the full trace. Gain: {main_label} against the best",
        "baseline of each layer.",
        "",
        "## Expected cost per layer",
        "",
        markdown_table(header, rows),
        "",
        "![expected cost per layer](layer_costs.png)",
        "",
    ]
    if sweep is not None:
        lines += [
            "## Expected cost against slots per GPU",
            "",
            "Mean over layers, from one copy of every expert to every GPU holding all of them.",
            "",
            "![expected cost against slots per GPU](slot_sweep.png)",
            "",
        ]
    lines += [
        f"## Co-activation, layer {layer_id}",
        "",
        "Share of tokens that choose both experts of a pair (diagonal left out).",
        "",
        "![co-activation heatmap](coactivation.png)",
        "",
    ]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
