"""``moefast convert``: a trace rewritten in the chunked Arrow format."""

from __future__ import annotations

from typing import Any

from moefast.cli.options import trace_format_option
from moefast.io.streaming import convert


def cmd_convert(args) -> int:

    options = {"format": args.trace_format} if args.trace_format else {}
    tokens = convert(args.trace, args.out, chunk_tokens=args.chunk_tokens, **options)
    print(f"{tokens} tokens written to {args.out} (Arrow IPC, {args.chunk_tokens} tokens a batch)")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="write traces as one chunked Arrow trace",
        description="Reads one or more traces (any format, or folders of shards) chunk by chunk"
        " and writes them as one moefast Arrow IPC trace, read later without loading it whole"
        " (needs pyarrow: pip install 'moefast[arrow]').",
    )
    p.add_argument("trace", nargs="+", help="trace files or folders, all of one model")
    p.add_argument("--out", required=True, help="Arrow trace to write (.arrow)")
    p.add_argument(
        "--chunk-tokens", type=int, default=1 << 16, help="tokens per record batch (65536)"
    )
    trace_format_option(p)
    p.set_defaults(run=cmd_convert)
