"""Command-line options shared by the subcommands, and the values built from them."""

from __future__ import annotations

import argparse

from moefast._util.checks import MAX_LAYERS
from moefast.batch.cost_model import CostModel
from moefast.io.readers import TRACE_FORMATS
from moefast.topology.times import Topology


def topology_from_args(args) -> Topology | None:
    """The topology of --topology PRESET --gpus-per-node N, checked against --gpus; the
    other topology options refused without it."""
    name = getattr(args, "topology", None)
    if name is None:
        given = [
            flag
            for flag, value in (
                ("--gpus-per-node", getattr(args, "gpus_per_node", None)),
                ("--num-groups", getattr(args, "num_groups", None)),
                ("--round-us", getattr(args, "round_us", None)),
            )
            if value is not None
        ]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise ValueError(f"{', '.join(given)} {verb} --topology PRESET")
        return None
    gpus_per_node = 8 if args.gpus_per_node is None else args.gpus_per_node
    if args.gpus % gpus_per_node:
        raise ValueError(
            f"--gpus {args.gpus} is not a multiple of --gpus-per-node {gpus_per_node}:"
            " GPUs come in whole nodes"
        )
    return Topology.preset(name, gpus_per_node=gpus_per_node)


def int_list(text: str, name: str, high: int = MAX_LAYERS) -> list[int]:
    """ "3-60" or "1,3,5-9" as a list of ints in [0, high), checked before a range is
    laid out (0-400000000 would fill memory)."""
    out: list[int] = []
    for part in text.split(","):
        a, dash, b = part.strip().partition("-")
        try:
            first, last = int(a), int(b if dash else a)
        except ValueError as err:
            raise ValueError(f"{name} must be ids or ranges like 3-60, got {text!r}") from err
        if not 0 <= first <= last < high:
            raise ValueError(
                f"{name}: {part.strip()!r} is not an id or ascending range in [0, {high})"
            )
        out += range(first, last + 1)
    return out


def cost_model_from_args(args: argparse.Namespace) -> CostModel:
    if args.preset is not None:
        return CostModel.preset(args.preset, gpu=args.gpu, p=args.p)
    return CostModel(args.alpha, args.beta, p=args.p)


def at_least(low: int):
    """An argparse type: an int >= low (argparse then exits with status 2 and its usage)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def cost_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--alpha", type=float, default=130.0, help="weight-read time of one expert, us (130)"
    )
    p.add_argument(
        "--beta", type=float, default=0.5, help="compute time per token of one expert, us (0.5)"
    )
    p.add_argument(
        "--p", type=float, default=1.0, help="shape of the per-expert time (1: alpha + beta n)"
    )
    p.add_argument(
        "--preset", default=None, help="cost model of a known expert shape, e.g. mixtral-8x7b"
    )
    p.add_argument("--gpu", default="h100", help="GPU of the preset: h100 or h200")


def placement_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpus", type=at_least(1), required=True, help="number of GPUs (expert-parallel ranks)"
    )
    p.add_argument("--slots", type=at_least(1), required=True, help="experts each GPU can hold")
    planning_options(p, "greedy (default), milp, contiguous, round_robin, eplb")


def planning_options(p: argparse.ArgumentParser, method_help: str) -> None:
    p.add_argument("--method", default="greedy", help=method_help)
    p.add_argument(
        "--coverage",
        type=float,
        default=0.99,
        help="share of tokens the planned subsets cover (0.99)",
    )
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument(
        "--no-sweep", action="store_true", help="leave the slots-per-GPU sweep out of the report"
    )


def trace_format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace-format",
        choices=TRACE_FORMATS,
        default=None,
        help="trace format (guessed when left out)",
    )
