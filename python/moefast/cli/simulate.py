"""``moefast simulate``: step times of placements over batch sizes (throughput and latency)."""

from __future__ import annotations

from typing import Any

from moefast._util.atomic import check_folder, check_not_input
from moefast.batch.times import simulate
from moefast.cli.options import (
    at_least,
    cost_model_and_source,
    cost_model_options,
    placement_options,
    trace_format_option,
)
from moefast.cli.output import check_memory_fits, plan_trace
from moefast.io.provenance import load_trace
from moefast.report import text_tables
from moefast.report.batch_plots import plot_throughput_latency
from moefast.trace import SYNTHETIC_MARK


def cmd_simulate(args) -> int:

    out = check_folder(args.out, "--out")
    check_not_input(out, [args.trace], "--out")
    try:
        sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    except ValueError:
        raise ValueError(
            f"--batch-sizes must be integers separated by commas, got {args.batch_sizes!r}"
        ) from None
    trace = load_trace(args.trace, format=args.trace_format)
    check_memory_fits(trace, args.gpus, args.slots)
    cm, cm_source = cost_model_and_source(args)
    placements = {
        "greedy": plan_trace(trace, args.gpus, args.slots, "greedy", args.coverage, args.seed),
        "contiguous": plan_trace(
            trace, args.gpus, args.slots, "contiguous", args.coverage, args.seed
        ),
        "EPLB": plan_trace(trace, args.gpus, args.slots, "eplb", args.coverage, args.seed),
    }
    if args.batch_aware > 0:
        placements[f"batch-aware (B={args.batch_aware})"] = plan_trace(
            trace, args.gpus, args.slots, "greedy", args.coverage, args.seed, args.batch_aware, cm
        )
    mark = f"[{SYNTHETIC_MARK}] " if trace.synthetic else ""
    print(
        f"{mark}{cm_source}; {trace.num_layers} layers, {args.gpus} GPUs x {args.slots} slots,"
        f" {args.steps} steps per batch size; in-sample: placements planned and simulated on"
        " the same trace"
    )
    header = [
        "placement",
        "batch",
        "mean step",
        "p50 step",
        "p99 step",
        "tokens per ms",
        "latency per token",
    ]
    rows, results = [], {}
    for name, model in placements.items():
        results[name] = simulate(trace, model, sizes, cm, seed=args.seed, steps=args.steps)
        for r in results[name]:
            rows.append(
                [
                    name,
                    str(r["batch_size"]),
                    f"{r['mean_step_time']:.1f}",
                    f"{r['p50_step_time']:.1f}",
                    f"{r['p99_step_time']:.1f}",
                    f"{r['throughput'] * 1e3:.1f}",
                    f"{r['latency_per_token']:.1f}",
                ]
            )
    print("in-sample step times and latency in the cost model's unit (us), throughput per ms:")
    print(text_tables.format_table(header, rows))
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_throughput_latency(
        results,
        out / "throughput_latency.png",
        # The mark on a line of its own: one long line would be cut at the figure's edge.
        title=f"{mark.strip()}\n" * trace.synthetic
        + f"Decode throughput vs latency, {args.gpus} GPUs x {args.slots} slots",
    )
    print(f"plot: {plot}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="throughput and latency of batches for several placements",
        description="Simulates decode steps of several batch sizes for the greedy, batch-aware,"
        " contiguous and EPLB placements of a trace (cost model of docs/cost-model.md#a-batch),"
        " prints step times, throughput and latency, and plots the throughput/latency curve.",
    )
    p.add_argument("trace")
    placement_options(p)
    p.add_argument(
        "--batch-sizes", default="1,4,16,64,256,1024", help="comma-separated (1,4,16,64,256,1024)"
    )
    p.add_argument(
        "--steps", type=at_least(1), default=300, help="simulated steps per batch size (300)"
    )
    p.add_argument(
        "--batch-aware",
        type=at_least(0),
        default=64,
        metavar="B",
        help="also plan batch-aware placements for batch size B (64; 0 to skip)",
    )
    cost_model_options(p)
    p.add_argument(
        "--out", default="moefast-simulate", help="folder for the plot (moefast-simulate)"
    )
    trace_format_option(p)
    p.set_defaults(run=cmd_simulate)
