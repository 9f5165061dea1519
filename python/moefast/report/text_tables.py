"""Tables as text: plain columns for the terminal and Markdown for reports."""

from __future__ import annotations

from moefast.evaluate.comparison import BASELINES, METHOD_LABELS, Comparison
from moefast.trace import SYNTHETIC_MARK


def comparison_title(comparison: Comparison, num_gpus: int, slots_per_gpu: int) -> str:
    """The line above a comparison table: what the numbers are and on which tokens."""
    text = (
        f"{comparison.basis} expected cost per layer (expert rounds per token),"
        f" {num_gpus} GPUs x {slots_per_gpu} slots"
    )
    if comparison.synthetic:
        text = f"[{SYNTHETIC_MARK}] {text}"
    return text + (f"; {comparison.note}:" if comparison.note else ":")


def comparison_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-layer table that the CLI prints and the report embeds."""
    methods = [m for m in BASELINES if m in comparison.costs] + [
        m for m in comparison.costs if m not in BASELINES
    ]
    labels = {**METHOD_LABELS, comparison.main_method: comparison.main_label}
    header = ["layer", *(labels.get(m) or METHOD_LABELS.get(m, m) for m in methods), "best bound"]
    has_gap = comparison.main_method in comparison.costs
    if has_gap:
        header.append("gap to bound")
    rows = []
    has_gain = bool(comparison.baselines) and comparison.main_method in comparison.costs
    gains = comparison.gain() if has_gain else None
    for i, layer in enumerate(comparison.layer_ids):
        row = [
            str(layer),
            *(f"{comparison.costs[m][i]:.3f}" for m in methods),
            f"{comparison.lower_bounds[i]:.3f}",
        ]
        if has_gap:
            row.append(f"{100 * comparison.gap()[i]:.1f}%")
        if gains is not None:
            row.append(f"{100 * gains[i]:.1f}%")
        rows.append(row)
    total = [
        "total",
        *(f"{comparison.costs[m].sum():.3f}" for m in methods),
        f"{comparison.lower_bounds.sum():.3f}",
    ]
    if has_gap:
        total.append(f"{100 * comparison.total_gap():.1f}%")
    if gains is not None:
        total.append(f"{100 * comparison.total_gain():.1f}%")
        header.append(f"{comparison.basis} gain")
    rows.append(total)
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
