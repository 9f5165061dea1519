"""The Markdown report of a planning run: costs per layer (held-out or in-sample, as labelled),
the learning curve, the slot sweep and the co-activation heatmap, with their plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import SubsetTable
from moefast._util.atomic import write_text
from moefast.evaluate.comparison import METHOD_LABELS, Comparison
from moefast.evaluate.learning_curve import LearningCurve
from moefast.evaluate.serving import record_dispatch, settings_rows
from moefast.report.plots import (
    plot_coactivation,
    plot_layer_costs,
    plot_learning_curve,
    plot_serving,
    plot_slot_sweep,
)
from moefast.report.text_tables import comparison_rows, markdown_table

Sweep = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]


def _curve_section(curve: LearningCurve) -> list[str]:
    rows = []
    for tokens, gain, interval in zip(
        curve.train_tokens, curve.gains, curve.intervals, strict=True
    ):
        span = "-" if interval is None else f"{100 * interval[0]:.1f}% to {100 * interval[1]:.1f}%"
        rows.append([str(tokens), f"{100 * gain:.1f}%", span])
    return [
        "## How much trace is enough",
        "",
        f"Held-out gain when planning on the first 1/8, 1/4, 1/2 and all of the train part"
        f" ({curve.note}).",
        "",
        markdown_table(["training tokens", "held-out gain", "95% interval"], rows),
        "",
        curve.sentence(),
        "",
        "![learning curve](learning_curve.png)",
        "",
    ]


def write_report(
    out_dir: Path,
    title: str,
    facts: dict[str, object],
    comparison: Comparison,
    heatmap: tuple[SubsetTable, int],
    sweep: tuple[Sweep, str] | None,
    num_gpus: int,
    curve: LearningCurve | None = None,
    serving: Mapping[str, Any] | None = None,
    chosen_slots: int | None = None,
) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; returns the Markdown file.
    ``sweep`` is the slot sweep with a note saying on which tokens it was scored (the
    plot marks ``chosen_slots``); ``serving`` is a plan's ``settings["serving"]``: every
    candidate's step time against the batch size, as a table and a plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table, layer_id = heatmap
    plot_coactivation(table, layer_id, out_dir / "coactivation.png")
    plot_layer_costs(comparison, out_dir / "layer_costs.png")
    header, rows = comparison_rows(comparison)
    main_label = METHOD_LABELS.get(comparison.main_method, comparison.main_method)
    lines = [f"# {title}", ""]
    if comparison.baselines:
        lines += [f"**{comparison.headline()}**", ""]
    lines += [f"- {name}: {value}" for name, value in facts.items()]
    lines += [
        "",
        "Costs are expected expert rounds per token (the number of experts the busiest GPU runs",
        f"one after the other), {comparison.basis}: {comparison.note}. Gain: {main_label}",
        "against the best baseline of each layer"
        + (
            f"; the interval is a bootstrap 95% interval resampling {comparison.units}."
            if comparison.gain_interval is not None
            else "."
        ),
        "",
        f"## Expected cost per layer ({comparison.basis})",
        "",
        markdown_table(header, rows),
        "",
        "![expected cost per layer](layer_costs.png)",
        "",
    ]
    if serving is not None:
        plot_serving(serving, out_dir / "serving.png")
        lines += [
            f"## Step time on the serving profile ({serving['basis']})",
            "",
            f"Simulated step time per candidate in us, summed over layers, {serving['note']};"
            f" {record_dispatch(serving)}; {serving['cost_model']}; * recommended.",
            "",
            markdown_table(*settings_rows(serving)),
            "",
            *(f"- {line}" for line in (*serving["warnings"], *serving.get("ties", ()))),
            f"**{serving['headline']}**",
            "",
            "![step time against the batch size](serving.png)",
            "",
        ]
    if curve is not None:
        plot_learning_curve(curve, out_dir / "learning_curve.png")
        lines += _curve_section(curve)
    if sweep is not None:
        (slots, costs, bound), note = sweep
        basis = note.split(":")[0]
        plot_slot_sweep(
            slots, costs, bound, num_gpus, out_dir / "slot_sweep.png", basis, chosen_slots
        )
        lines += [
            f"## Expected cost against slots per GPU ({basis})",
            "",
            "Mean over layers, from one copy of every expert to every GPU holding all of them;"
            f" {note}."
            + ("" if chosen_slots is None else f" The plan's {chosen_slots} slots are marked."),
            "",
            "![expected cost against slots per GPU](slot_sweep.png)",
            "",
        ]
    lines += [
        f"## Co-activation, layer {layer_id}",
        "",
        "Share of tokens that choose both experts of a pair (diagonal left out), all tokens.",
        "",
        "![co-activation heatmap](coactivation.png)",
        "",
    ]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
