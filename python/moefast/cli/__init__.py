"""The ``moefast`` command: demo, plan, evaluate, inspect, synth, convert, simulate and
record subcommands, one module each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from moefast._core import __version__
from moefast.cli import convert, demo, evaluate, inspect, plan, record, simulate, synth


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moefast", description="Co-activation-aware placement of MoE experts on GPUs."
    )
    parser.add_argument("--version", action="version", version=f"moefast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo.add_parser(sub)
    plan.add_parser(sub)
    evaluate.add_parser(sub)
    inspect.add_parser(sub)
    synth.add_parser(sub)
    convert.add_parser(sub)
    simulate.add_parser(sub)
    record.add_parser(sub)
    return parser


#: Exit status of a run stopped by an error the user can fix (bad input, bad arguments): the
#: status argparse gives a bad command line.
EXIT_BAD_INPUT = 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as err:
        message = " ".join(str(err).split())  # one line, whatever the error holds
        print(f"moefast {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"moefast {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
