"""``moefast evaluate``: a placement file scored on a trace, and its drift over windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moefast._core import expected_cost, lower_bound
from moefast.cli.options import at_least, trace_format_option
from moefast.cli.output import print_comparison
from moefast.evaluate.comparison import BASELINES, Comparison
from moefast.evaluate.drift import drift_windows
from moefast.io.engines import PLACEMENT_FORMATS, load_placement
from moefast.io.provenance import load_trace
from moefast.placement import ModelPlacement
from moefast.report import text_tables
from moefast.search.methods import optimize
from moefast.trace import Trace


def cmd_evaluate(args) -> int:
    trace = load_trace(args.trace, args.trace_format)
    model = load_placement(
        args.placement,
        args.placement_format,
        num_gpus=args.gpus,
        num_experts=trace.num_experts,
        model=args.model,
    )
    if args.windows:
        return print_drift(trace, model, args)
    tables = trace.tables()
    costs = {"placement": model.evaluate(trace)}
    for method in () if args.no_baselines else BASELINES:
        placed = [optimize(t, model.num_gpus, model.slots_per_gpu, method=method) for t in tables]
        costs[method] = np.array([expected_cost(t, p) for t, p in zip(tables, placed, strict=True)])
    comparison = Comparison(
        trace.layer_ids,
        costs,
        np.array([lower_bound(t, model.num_gpus, model.slots_per_gpu) for t in tables]),
        "placement",
        basis="evaluated",
        synthetic=trace.synthetic,
        note=(
            f"the placement scored on {trace.num_tokens} tokens of {Path(args.trace).name}"
            " (held-out if it was planned on other tokens); baselines planned on these same"
            " tokens (in-sample)"
        ),
    )
    print_comparison(comparison, model.num_gpus, model.slots_per_gpu)
    print_repeats(model)
    return 0


def print_repeats(model: ModelPlacement) -> None:
    """The slots an engine map spends on a second copy of an expert on the same GPU."""
    repeats = model.repeated_slots
    if repeats.any():
        total = len(model) * model.num_gpus * model.slots_per_gpu
        print(
            f"repeats: {int(repeats.sum())} of {total} slots"
            f" ({repeats.sum() / total:.1%}) hold an expert already on the same GPU, in"
            f" {int(np.count_nonzero(repeats))} of {len(model)} layers; they serve no decode"
            " token (costs count each expert once per GPU)"
        )


def print_drift(trace: Trace, model: ModelPlacement, args) -> int:
    windows = drift_windows(trace, model, args.windows, seed=0)
    header = [
        "window",
        "tokens",
        "fixed",
        "re-planned on previous",
        "re-planned here",
        "re-plan gain",
    ]
    rows = []
    for i, w in enumerate(windows):
        previous = "-" if w.replanned_previous is None else f"{w.replanned_previous:.3f}"
        gain = (
            "-"
            if w.replanned_previous is None
            else f"{100 * (w.fixed - w.replanned_previous) / w.fixed:+.1f}%"
        )
        rows.append(
            [
                str(i),
                f"{w.first_token}+{w.tokens}",
                f"{w.fixed:.3f}",
                previous,
                f"{w.replanned_here:.3f}",
                gain,
            ]
        )
    print(
        f"expected cost of the model (sum over layers, expert rounds per token) on {len(windows)}"
        " consecutive windows: the fixed placement; a greedy placement re-planned on the window"
        " before (held-out); one re-planned on the window itself (in-sample, the best re-planning"
        " could do). Re-plan gain: held-out re-plan against the fixed placement."
    )
    print(text_tables.format_table(header, rows))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="expected cost of a placement on a trace",
        description="Prints the expected cost per layer of a placement file on a trace (held-out"
        " when the placement was planned on other tokens), the lower bound and the baselines"
        " with the same memory (planned on this trace: in-sample). With --windows N: the"
        " model's cost on N consecutive windows beside placements re-planned on the window"
        " before (held-out) and on the window itself (in-sample), to see when re-planning pays.",
    )
    p.add_argument("trace")
    p.add_argument("placement", help="placement file (any format moefast writes)")
    p.add_argument(
        "--gpus",
        type=at_least(1),
        default=None,
        help="number of GPUs (needed for sglang and trtllm files)",
    )
    p.add_argument("--placement-format", choices=PLACEMENT_FORMATS, default=None)
    p.add_argument(
        "--model",
        default=None,
        help="model preset naming the file's layers (vLLM-Ascend files number them by position)",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the baseline placements")
    p.add_argument(
        "--windows",
        type=at_least(1),
        default=None,
        metavar="N",
        help="drift: the model's cost on N consecutive windows beside re-planned placements",
    )
    trace_format_option(p)
    p.set_defaults(run=cmd_evaluate)
