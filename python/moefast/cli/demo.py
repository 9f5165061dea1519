"""``moefast demo``: the bundled gpt-oss-20b trace planned, scored held out, and reported."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import numpy as np

from moefast._util.atomic import check_folder
from moefast.batch.cost_model import CostModel, preset_source
from moefast.cli.options import at_least, planning_options
from moefast.cli.output import plan_trace, print_comparison, print_serving, write_report
from moefast.data import GPTOSS20B_DECODE
from moefast.evaluate.heldout import cross_validated
from moefast.evaluate.selection import Estimator
from moefast.evaluate.slot_sweep import default_slots
from moefast.io.provenance import load_trace
from moefast.planning.plan import plan, plan_layers
from moefast.planning.profile import DEFAULT_PROFILE
from moefast.search.options import Objective
from moefast.splits import fold_positions
from moefast.topology.cluster import Cluster

#: The model of the bundled trace.
DEMO_MODEL = "gpt-oss-20b"


def cmd_demo(args) -> int:

    out = check_folder(args.out, "--out")
    trace = load_trace(GPTOSS20B_DECODE)
    if args.slots is None:
        args.slots = default_slots(trace.num_experts, args.gpus)
    print(
        f"bundled trace: gpt-oss-20b decode, {trace.num_tokens} tokens in 3 answers,"
        f" {trace.num_layers} layers, top-{trace.k} of {trace.num_experts} experts"
    )
    assert trace.request_ids is not None
    answers = len(np.unique(trace.request_ids))
    estimator = Estimator(args.coverage)

    def planner(layer_tables) -> list:
        return plan_layers(layer_tables, args.gpus, args.slots, args.method, estimator, args.seed)

    # The headline: every answer scored by placements planned on the other answers.
    held_out = cross_validated(
        trace, planner, args.gpus, args.slots, args.method, answers, "request", args.seed
    )
    print_comparison(held_out, args.gpus, args.slots)
    # The placement written out is planned on all answers; its own figures are in-sample.
    model = plan_trace(trace, args.gpus, args.slots, args.method, args.coverage, args.seed)
    assert model.evaluation is not None
    print(f"the placement written out is planned on all answers: {model.evaluation.headline()}")
    folds = fold_positions(trace, answers, "request", args.seed)
    write_report(
        trace, args, "moefast demo: gpt-oss-20b decode routing", out, held_out, folds, model
    )
    model.save(out / "placement.json", "json")
    # What a serving team runs: every candidate at B = 1 and a typical decode batch, held
    # out, under SGLang's static dispatch; the SGLang file is the fastest of them.
    served = plan(
        trace,
        Cluster(args.gpus, args.slots),
        method=args.method,
        seed=args.seed,
        objective=Objective(cost_model=CostModel.preset(DEMO_MODEL)),
        profile=replace(DEFAULT_PROFILE, engine="sglang", compare_best=True),
        progress=False,
    )
    args.cost_model_source = f"{DEMO_MODEL} expert, {preset_source(DEMO_MODEL)}"
    print_serving(served, args)
    launch = served.save(out / "placement_sglang.json", "sglang", model=DEMO_MODEL)
    print(f"placements: {out / 'placement.json'}, {out / 'placement_sglang.json'}")
    print(f"start SGLang with: {launch['command_line']}")
    print(f"headline: {held_out.headline()}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="plan the bundled gpt-oss-20b trace and write a report",
        description="Plans the bundled gpt-oss-20b decode trace (three answers), prints the"
        " held-out cost of every layer against the baselines (each answer scored by placements"
        " planned on the other two, with a bootstrap 95% interval of the gain) and writes a"
        " Markdown report with the learning curve and plots, and the placement planned on all"
        " answers; then scores every candidate on B = 1 and a typical decode batch (64), held"
        " out, under SGLang's static dispatch, and writes the fastest as the SGLang file.",
    )
    p.add_argument("--out", default="moefast-demo", help="report folder (moefast-demo)")
    p.add_argument("--gpus", type=at_least(1), default=4, help="number of GPUs (4)")
    p.add_argument(
        "--slots",
        type=at_least(1),
        default=None,
        help="experts per GPU (default: 1.25 x experts / GPUs)",
    )
    planning_options(p, argparse.SUPPRESS)
    p.set_defaults(run=cmd_demo)
