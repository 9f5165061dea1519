"""``moefast inspect``: what a trace holds and how strongly its experts co-activate."""

from __future__ import annotations

from typing import Any

from moefast._util.progress import progress
from moefast.cli.options import at_least, trace_format_option
from moefast.evaluate.coactivation import top_pairs
from moefast.io.provenance import load_trace
from moefast.report import text_tables
from moefast.trace import SYNTHETIC_MARK


def cmd_inspect(args) -> int:
    trace = load_trace(args.trace, args.trace_format)
    print(
        f"{args.trace}: {trace.num_tokens} tokens, {trace.num_layers} layers"
        f" (ids {trace.layer_ids[0]}..{trace.layer_ids[-1]}), {trace.num_experts} experts,"
        f" k = {trace.k}"
        + (", weighted" if trace.weights is not None else "")
        + (f" [{SYNTHETIC_MARK}]" if trace.synthetic else "")
    )
    header = ["layer", "subsets", "80%", "90%", "99%", "load max/mean"]
    rows, pairs = [], []
    tables = progress(trace.tables(), trace.num_layers, "layers")
    for layer, table in zip(trace.layer_ids, tables, strict=True):
        load = table.expert_load()
        rows.append(
            [
                str(layer),
                str(len(table)),
                *(str(len(table.prune(coverage=c))) for c in (0.8, 0.9, 0.99)),
                f"{load.max() / load.mean():.2f}",
            ]
        )
        pairs += [(layer, *p) for p in top_pairs(table, args.pairs)]
    print("distinct subsets, and the most frequent ones needed to cover 80/90/99% of tokens:")
    print(text_tables.format_table(header, rows))
    pairs.sort(key=lambda p: -p[3])
    print("most co-activated pairs (share of a layer's tokens; x: against uniform routing):")
    print(
        text_tables.format_table(
            ["layer", "experts", "share", "x uniform"],
            [
                [str(layer), f"{i}+{j}", f"{s:.3f}", f"{x:.1f}"]
                for layer, i, j, s, x in pairs[: args.pairs]
            ],
        )
    )
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="statistics of a trace",
        description="Tokens, layers, experts, k; subsets needed for 80/90/99%% coverage,"
        " expert load skew and the most co-activated pairs.",
    )
    p.add_argument("trace")
    p.add_argument("--pairs", type=at_least(0), default=5, help="how many pairs to list (5)")
    trace_format_option(p)
    p.set_defaults(run=cmd_inspect)
