"""Running a plan from the command line and printing it: the comparison, the topology and
re-planning records, and the Markdown report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from moefast._util.checks import check_count
from moefast.batch.cost_model import CostModel
from moefast.cli.options import (
    budget_from_args,
    cluster_from_args,
    cost_model_and_source,
    evaluation_from_args,
    moves_from_args,
    objective_from_args,
)
from moefast.evaluate.coactivation import hottest_layer
from moefast.evaluate.comparison import BASELINES, Comparison
from moefast.evaluate.heldout import Evaluation, default_split_by
from moefast.evaluate.learning_curve import learning_curve
from moefast.evaluate.selection import Estimator
from moefast.evaluate.serving import record_dispatch, settings_rows
from moefast.evaluate.slot_sweep import slot_sweep
from moefast.io.engines import launch_settings, load_placement
from moefast.io.streaming import trace_files
from moefast.placement import ModelPlacement
from moefast.planning.executors import RayExecutor
from moefast.planning.plan import plan, plan_layers
from moefast.planning.profile import (
    DEFAULT_PROFILE,
    TYPICAL_DECODE_BATCH,
    ServingProfile,
    redundant_flag,
)
from moefast.planning.replan import curve_rows
from moefast.report import report, text_tables
from moefast.search.methods import check_memory
from moefast.search.node_plan import headline, time_rows
from moefast.search.options import Objective
from moefast.splits import split_positions
from moefast.topology.cluster import Cluster
from moefast.trace import SYNTHETIC_MARK, Trace


def plan_trace(
    trace: Trace,
    gpus: int,
    slots: int,
    method: str,
    coverage: float,
    seed: int,
    batch_size: int | None = None,
    cost_model: CostModel | None = None,
) -> ModelPlacement:
    """An in-sample plan, for decode or for batches of `batch_size` tokens when it is given
    (the demo's and ``moefast simulate``'s placements)."""
    objective = Objective() if batch_size is None else Objective("batch", batch_size, cost_model)
    return plan(
        trace,
        Cluster(gpus, slots),
        method=method,
        seed=seed,
        objective=objective,
        evaluation=Evaluation(holdout=None, coverage=coverage),
    )


def serving_profile(args) -> ServingProfile | None:
    """The profile of --batch-sizes (default `DEFAULT_PROFILE`, B = 1 and a typical decode
    batch); None where a profile does not apply (--current, --topology)."""
    if getattr(args, "current", None) is not None or getattr(args, "topology", None):
        if getattr(args, "batch_sizes", None) is not None:
            raise ValueError("--batch-sizes is not supported with --current or --topology yet")
        return None
    text = getattr(args, "batch_sizes", None)
    engine = getattr(args, "format", "sglang")
    dispatch = getattr(args, "dispatch", None)
    if text is None:
        profile = replace(DEFAULT_PROFILE, gpu=args.gpu, engine=engine, dispatch=dispatch)
    else:
        profile = ServingProfile.parse(text, gpu=args.gpu, engine=engine, dispatch=dispatch)
    # Under an engine's rule, also what moefast.dispatch (the best choice) would run.
    return replace(profile, compare_best=profile.rule != "best")


def profile_words(args) -> str:
    """Which profile the figures are for: --batch-sizes, or the default one, said so."""
    if getattr(args, "batch_sizes", None) is not None:
        return f"--batch-sizes {args.batch_sizes}"
    return (
        f"no --batch-sizes: B = 1 and B = {TYPICAL_DECODE_BATCH} (a typical decode batch),"
        " equal shares, no batch-aware search"
    )


def print_serving(model: ModelPlacement, args) -> None:
    """The candidates' step times over the profile, the recommendation and its warnings."""
    serving = model.settings.get("serving")
    if serving is None:
        return
    print(
        f"serving profile ({profile_words(args)}); simulated step time per candidate, summed"
        f" over layers, {serving['basis']}, {record_dispatch(serving)};"
        f" {getattr(args, 'cost_model_source', serving['cost_model'])}; * recommended:"
    )
    print(text_tables.format_table(*settings_rows(serving)))
    print_verdict(serving, getattr(args, "format", "sglang"))


def print_verdict(serving: dict, engine: str) -> None:
    """The warnings, ties, headline and the number of redundant experts with the engine's
    setting, of a serving record."""
    for line in (*serving["warnings"], *serving.get("ties", ())):
        print(line)
    print(serving["headline"])
    redundant = serving.get("redundant_experts")
    if redundant is None:
        return
    counts = sorted({e["redundant_experts"] for e in serving["candidates"].values()})
    flag = redundant_flag(engine, redundant, serving["num_experts"])
    print(
        f"redundant experts: {redundant} ({flag}), the fastest of"
        f" {', '.join(map(str, counts))} on the profile, under {record_dispatch(serving)}"
        + (f"; {serving['redundancy_note']}" if serving.get("redundancy_note") else "")
    )
    alternative = serving.get("with_moefast_dispatch")
    if alternative is not None:
        redundant = alternative["redundant_experts"]
        print(
            "with moefast.dispatch in the engine (the best replica choice,"
            f" docs/guides/dispatch.md): {alternative['candidate']}"
            # Names of candidates planned with fewer slots already say how many.
            + (
                ""
                if redundant is None or "redundant" in alternative["candidate"]
                else f" ({redundant} redundant)"
            )
            + f" would run {alternative['expected_step_time_us']:.1f} us expected,"
            f" {alternative['below_recommended']:.1%} below the recommendation under"
            f" {record_dispatch(serving)}; plan for it with --dispatch best"
        )


def check_memory_fits(trace: Trace, gpus: int, slots: int) -> None:
    check_memory(trace.num_experts, gpus, slots)


def print_topology(record: dict) -> None:

    print(
        "(with --topology the rounds above are the node-aware plan's; its times with"
        " communication follow)"
    )
    print(
        f"{record['basis']} modeled layer time with communication per layer"
        f" ({record['measure']}; {record['note']}); percent: slower than node-aware:"
    )
    print(text_tables.format_table(*time_rows(record)))
    if record["num_groups"] is not None:
        print(
            f"node-aware and EPLB hierarchical keep each of the {record['num_groups']} expert"
            " groups on one node; EPLB global and the compute-only plan do not"
        )
    print(headline(record))


def print_comparison(comparison: Comparison, gpus: int, slots: int) -> None:
    print(text_tables.comparison_title(comparison, gpus, slots))
    print(text_tables.format_table(*text_tables.comparison_rows(comparison)))
    if comparison.baselines:
        print(comparison.headline())


def run_plan(trace: Trace, args, title: str, report_dir: Path | None) -> ModelPlacement:
    """Plan, print the per-layer comparison with the baselines (held-out when the trace is
    large enough), write the report if asked."""
    check_memory_fits(trace, args.gpus, args.slots)
    batch_size = getattr(args, "batch_size", None)
    cost_model, args.cost_model_source = cost_model_and_source(args)
    profile = serving_profile(args)
    served = served_placement(args, trace.num_experts, trace.layer_ids)
    model = plan(
        trace,
        cluster_from_args(args),
        method=args.method,
        seed=args.seed,
        objective=objective_from_args(args, cost_model if batch_size or profile else None),
        evaluation=evaluation_from_args(args),
        budget=budget_from_args(args),
        moves=moves_from_args(args, served),
        profile=profile,
        progress=not getattr(args, "quiet", True),
    )
    if getattr(args, "launch", None) is not None and model.slots_per_gpu != args.slots:
        # The profile chose fewer redundant experts: the engine starts with that many.
        args.launch = launch_settings(
            args.format, args.out, args.gpus, model.slots_per_gpu, trace.num_experts
        )
    comparison = model.evaluation
    assert comparison is not None
    print_comparison(comparison, args.gpus, args.slots)
    print_topology_and_replan(model, args)
    print_serving(model, args)
    print(f"estimator: {model.settings['estimator']}")
    if report_dir is not None:
        folds: list[tuple[np.ndarray, np.ndarray]] = []
        # The learning curve replans with the decode greedy: not for batch-aware plans.
        if comparison.basis == "held-out" and batch_size is None:
            by = args.split_by or default_split_by(trace)
            folds = [split_positions(trace, args.holdout, by, args.seed)]
        write_report(trace, args, title, report_dir, comparison, folds, model)
    return model


def print_topology_and_replan(model: ModelPlacement, args) -> None:
    if "topology" in model.settings:
        model.settings["topology"]["preset"] = args.topology
        print_topology(model.settings["topology"])
    if "replan" in model.settings:
        print_replan(model.settings["replan"])


def served_placement(args, num_experts: int, layer_ids: Sequence[int]) -> ModelPlacement | None:
    """The served placement of --current, its layers matched to the trace's."""
    path = getattr(args, "current", None)
    if path is None:
        if (
            getattr(args, "max_moves", None) is not None
            or getattr(args, "copy_cost", None) is not None
        ):
            raise ValueError(
                "--max-moves and --copy-cost need --current FILE (the served placement)"
            )
        return None
    return load_placement(
        path,
        args.current_format,
        num_gpus=args.gpus,
        num_experts=num_experts,
        layer_ids=layer_ids,
        model=args.model,
    )


def print_replan(summary: dict) -> None:

    copies = summary["copies"]
    price = "" if summary["copy_cost"] is None else f", copy cost {summary['copy_cost']}"
    print(
        f"re-planned from the current placement: {sum(copies)} copies in all, at most"
        f" {max(copies)} per layer (budget {summary['max_moves']}{price}); gain against"
        " moves (costs on the tables planned on):"
    )
    print(text_tables.format_table(*curve_rows(summary)))
    held = summary.get("held_out")
    if held is not None:
        unit = summary.get("unit", "rounds")
        line = (
            f"held out (tokens not planned on), mean per layer in {unit}: served"
            f" {held['served']:.4f}, re-planned {held['replanned']:.4f}"
        )
        if held["full"] is not None:
            line += f", full re-plan {held['full']:.4f}"
        share = held["share_of_full_gain"]
        line += (
            ": the full re-plan gains nothing here"
            if share is None
            else f": {share:.0%} of the full re-plan's gain"
        )
        print(line)


def write_report(
    trace: Trace,
    args,
    title: str,
    report_dir: Path,
    comparison: Comparison,
    folds: list[tuple[np.ndarray, np.ndarray]],
    model: ModelPlacement,
) -> None:
    """The Markdown report: held-out costs, learning curve and slot sweep on the first fold."""
    tables = trace.tables()
    if trace.synthetic:
        title = f"{title} [{SYNTHETIC_MARK}]"
    curve = None
    sweep, sweep_note = None, "in-sample: planned and scored on all tokens"
    estimator = Estimator(args.coverage)

    def planner(layer_tables) -> list:
        return plan_layers(layer_tables, args.gpus, args.slots, args.method, estimator, args.seed)

    if folds:
        curve = learning_curve(trace, folds, planner, args.gpus, args.slots, args.method, args.seed)
        print(f"[{SYNTHETIC_MARK}] " * trace.synthetic + curve.sentence())
    if not args.no_sweep:
        train_tables, score_tables = tables, None
        if folds:
            train_at, test_at = folds[0]
            train_tables = trace.select_tokens(train_at).tables()
            score_tables = trace.select_tokens(test_at).tables()
            sweep_note = (
                f"held-out: planned on {len(train_at)} tokens, scored on {len(test_at)} others"
            )
        sweep = slot_sweep(
            train_tables,
            args.gpus,
            tuple(dict.fromkeys((args.method, *BASELINES))),
            coverage=args.coverage,
            seed=args.seed,
            score_tables=score_tables,
            include=args.slots,
        )
    hottest = hottest_layer(tables)
    facts = {
        "trace": f"{trace.num_tokens} tokens, {trace.num_layers} layers,"
        f" top-{trace.k} of {trace.num_experts} experts"
        + (f" ({SYNTHETIC_MARK})" if trace.synthetic else ""),
        "GPUs": args.gpus,
        "slots per GPU": args.slots,
        "method": f"{args.method} (subsets covering {args.coverage:.0%} of tokens,"
        f" seed {args.seed})",
        "estimator": model.settings.get("estimator", "plain table"),
        "costs": f"{comparison.basis} ({comparison.note})",
    }
    if "topology" in model.settings:
        facts["layer time with communication"] = headline(model.settings["topology"])
    if "replan" in model.settings:
        _, rows = curve_rows(model.settings["replan"])
        facts["gain against moves (per layer: cost, share of the full re-plan's gain)"] = "; ".join(
            f"{moves}: {cost} ({share})" for moves, _, cost, share in rows
        )
    launch = getattr(args, "launch", None)
    if launch:
        facts["engine settings"] = "; ".join(f"{k}: {v}" for k, v in launch.items())
    path = report.write_report(
        report_dir,
        title,
        facts,
        comparison,
        (tables[hottest], trace.layer_ids[hottest]),
        (sweep, sweep_note) if sweep is not None else None,
        args.gpus,
        curve=curve,
        serving=model.settings.get("serving"),
        chosen_slots=args.slots,
    )
    print(f"report: {path}")


def plan_files_cli(
    args: Any,
    cost_model: Callable[[Any], Any],
    show: Callable[[Any, int, int], None],
    model_layout: Any = None,
    current: Any = None,
    topology: Any = None,
) -> Any:
    """``moefast plan`` on trace files by streaming, locally or on workers (``--workers``,
    ``--ray``): plans (from the served placement ``current`` with ``--max-moves`` and
    ``--copy-cost``; node-aware for ``topology`` with ``--num-groups`` and ``--round-us``),
    prints the comparison with the baselines (``show``), returns the model. Scores are held
    out as `plan` holds them out for files (the last tokens of each)."""
    import multiprocessing
    from contextlib import ExitStack

    if args.report is not None:
        raise ValueError("--report needs one trace read whole; leave it out when streaming")
    if args.trace_format is not None:
        raise ValueError("--trace-format: streamed files are recognized by name and content")
    if args.workers is not None and args.ray is not None:
        raise ValueError("give --workers or --ray, not both")
    batch_size = getattr(args, "batch_size", None) or None
    profile = serving_profile(args)
    with ExitStack() as stack:
        executor: Executor | None = None
        if args.ray is not None:
            executor = stack.enter_context(RayExecutor(args.ray, args.workers))
        elif args.workers is not None:
            workers = check_count("--workers", args.workers)
            executor = stack.enter_context(
                ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            )
        model = plan(
            args.trace,
            cluster_from_args(args, topology),
            method=args.method,
            seed=args.seed,
            objective=objective_from_args(
                args, cost_model(args) if batch_size is not None or profile else None
            ),
            evaluation=evaluation_from_args(args),
            budget=budget_from_args(args),
            moves=moves_from_args(args, current),
            profile=profile,
            model=model_layout,
            executor=executor,
            chunk_tokens=args.chunk_tokens,
            progress=not getattr(args, "quiet", True),
        )
    print(f"{len(trace_files(args.trace))} trace file(s) read by streaming")
    show(model.evaluation, args.gpus, args.slots)
    return model
