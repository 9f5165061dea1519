"""Command-line options shared by the subcommands, and the values built from them."""

from __future__ import annotations

import argparse

from moefast._util.checks import MAX_LAYERS
from moefast.batch.cost_model import CostModel, preset_key, preset_source
from moefast.evaluate.heldout import Evaluation
from moefast.io.readers import TRACE_FORMATS
from moefast.moves import ROUND_US, MoveBudget
from moefast.placement import ModelPlacement
from moefast.search.options import Budget, Objective
from moefast.topology.cluster import Cluster
from moefast.topology.times import Topology

# The options of `moefast.plan`, each built here from its flags (one flag, one field).


def cluster_from_args(args: argparse.Namespace, topology: Topology | None = None) -> Cluster:
    """--gpus, --slots, --topology with --gpus-per-node (or ``topology``, built from them
    already), --num-groups, --round-us."""
    if topology is None:
        topology = topology_from_args(args)
    round_us = getattr(args, "round_us", None)
    return Cluster(
        args.gpus,
        args.slots,
        topology=topology,
        num_groups=getattr(args, "num_groups", None),
        round_us=ROUND_US if round_us is None else round_us,
    )


def objective_from_args(args: argparse.Namespace, cost_model: CostModel | None) -> Objective:
    """--batch-size (none: decode) and the cost model of --alpha/--beta/--p/--preset/--gpu
    (``cost_model``: None where no step is timed)."""
    batch_size = getattr(args, "batch_size", None)
    if batch_size is None:
        return Objective(cost_model=cost_model)
    return Objective("batch", batch_size, cost_model)


def evaluation_from_args(args: argparse.Namespace) -> Evaluation:
    """--holdout, --split-by, --estimator, --coverage."""
    return Evaluation(args.holdout, args.split_by, args.estimator, args.coverage)


def budget_from_args(args: argparse.Namespace) -> Budget:
    """--time-budget, --work-budget."""
    return Budget(
        time_budget=getattr(args, "time_budget", None),
        work_budget=getattr(args, "work_budget", None),
    )


def moves_from_args(args: argparse.Namespace, current: ModelPlacement | None) -> MoveBudget | None:
    """--current (read already: ``current``), --max-moves (a count, or a share of a layer's
    slots), --copy-cost; None without --current."""
    if current is None:
        return None
    max_moves = max_moves_for(getattr(args, "max_moves", None), args.gpus, args.slots)
    return MoveBudget(current, max_moves, getattr(args, "copy_cost", None))


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


#: The cost model without --alpha/--beta, --preset or a --model of a known expert: a
#: Mixtral-size expert on an H100.
DEFAULT_ALPHA, DEFAULT_BETA = 130.0, 0.5


def cost_model_from_args(args: argparse.Namespace) -> CostModel:
    """--preset (or, without --alpha/--beta, the --model's expert) on --gpu; else
    --alpha/--beta/--p."""
    return cost_model_and_source(args)[0]


def cost_model_and_source(args: argparse.Namespace) -> tuple[CostModel, str]:
    """The cost model of the options and one phrase saying where it comes from."""
    alpha, beta, p = getattr(args, "alpha", None), getattr(args, "beta", None), args.p
    name = args.preset
    if name is None and alpha is None and beta is None and getattr(args, "model", None):
        try:
            name = preset_key(args.model)
        except ValueError:
            name = None  # a layout without a known expert shape: the default model
    if name is not None:
        if alpha is not None or beta is not None:
            raise ValueError("give --preset or --alpha/--beta, not both")
        cm = CostModel.preset(name, gpu=args.gpu, p=p)
        return cm, f"{cm} ({name} on {args.gpu}: {preset_source(name, args.gpu)})"
    given = alpha is not None or beta is not None
    cm = CostModel(
        DEFAULT_ALPHA if alpha is None else alpha,
        DEFAULT_BETA if beta is None else beta,
        p=1.0 if p is None else p,
    )
    return cm, f"{cm} ({'--alpha/--beta/--p' if given else 'default: a Mixtral-size expert'})"


def moves_option(text: str) -> int | float:
    """An argparse type for --max-moves: a count >= 0, or a share of the slots ("10%",
    returned as the fraction 0.1; `max_moves_for` turns it into a count)."""
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a share: {text!r}") from None
        if not 0 <= share <= 100:
            raise argparse.ArgumentTypeError(f"a share must be in 0%..100%, got {text}")
        return share / 100
    return at_least(0)(text)


moves_option.__name__ = "count or share"


def max_moves_for(value: int | float | None, num_gpus: int, slots_per_gpu: int) -> int | None:
    """--max-moves as a count per layer: a share of the layer's num_gpus x slots_per_gpu
    slots, rounded down."""
    if isinstance(value, float):
        return int(value * num_gpus * slots_per_gpu + 1e-9)
    return value


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


def cost_model_options(p: Options) -> None:
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help=f"weight-read time of one expert, us ({DEFAULT_ALPHA:g} without --preset)",
    )
    p.add_argument(
        "--beta",
        type=float,
        default=None,
        help=f"compute time per token of one expert, us ({DEFAULT_BETA:g} without --preset)",
    )
    p.add_argument(
        "--p",
        type=float,
        default=None,
        help="shape of the per-expert time (1: alpha + beta n; default: the preset's fit, or 1)",
    )
    p.add_argument(
        "--preset",
        default=None,
        metavar="MODEL",
        help="cost model of a model's expert on --gpu, by any name --model accepts (e.g. olmoe,"
        " deepseek-v3): the H100 calibration fit where measured, else a datasheet estimate;"
        " default: --model's, when it names a known expert and --alpha/--beta are not given",
    )
    p.add_argument("--gpu", default="h100", help="GPU of the preset: h100 or h200 (h100)")


#: What --method takes.
METHOD_HELP = "greedy (default), milp, contiguous, round_robin, eplb"

#: Any parser or argument group of one.
Options = argparse.ArgumentParser | argparse._ArgumentGroup


def placement_options(p: argparse.ArgumentParser) -> None:
    cluster_options(p)
    planning_options(p, METHOD_HELP)


def cluster_options(p: Options) -> None:
    """The GPUs and their slots (`moefast.Cluster`'s first fields)."""
    p.add_argument(
        "--gpus", type=at_least(1), required=True, help="number of GPUs (expert-parallel ranks)"
    )
    p.add_argument("--slots", type=at_least(1), required=True, help="experts each GPU can hold")


def planning_options(p: Options, method_help: str, coverage_group: Options | None = None) -> None:
    p.add_argument("--method", default="greedy", help=method_help)
    (coverage_group or p).add_argument(
        "--coverage",
        type=float,
        default=0.99,
        help="share of tokens the planned subsets cover (0.99)",
    )
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument(
        "--no-sweep", action="store_true", help="leave the slots-per-GPU sweep out of the report"
    )


def trace_format_option(p: Options) -> None:
    p.add_argument(
        "--trace-format",
        choices=TRACE_FORMATS,
        default=None,
        help="trace format (guessed when left out)",
    )
