"""The ``moefast`` command: demo, plan, evaluate, inspect, synth, convert and simulate
subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

import moefast
from moefast import report, text_tables
from moefast._core import expected_cost, lower_bound
from moefast.atomic import check_folder, check_writable
from moefast.coactivation import hottest_layer, top_pairs
from moefast.comparison import BASELINES, Comparison
from moefast.drift import drift_windows
from moefast.formats import PLACEMENT_FORMATS, load_placement
from moefast.heldout import cross_validated, default_split_by
from moefast.learning_curve import learning_curve
from moefast.model import ModelPlacement
from moefast.optimizers import check_memory, optimize
from moefast.planner import ESTIMATOR_CHOICES, plan_layers
from moefast.progress import progress
from moefast.readers import TRACE_FORMATS, load_expert_load
from moefast.selection import Estimator
from moefast.slot_sweep import default_slots, slot_sweep
from moefast.splits import SPLIT_BY, fold_positions, split_positions
from moefast.synthetic import synthetic_trace
from moefast.topology import PRESETS as TOPOLOGY_PRESETS
from moefast.topology import V3_ROUND_US, Topology
from moefast.trace import Trace, load_trace


def _plan(
    trace: Trace,
    gpus: int,
    slots: int,
    method: str,
    coverage: float,
    seed: int,
    batch_size: int | None = None,
    cost_model: moefast.CostModel | None = None,
    holdout: float | None = None,
    split_by: Literal["time", "request"] | None = None,
    estimator: Literal["plain", "auto"] = "plain",
    time_budget: float | None = None,
    work_budget: int | None = None,
    current: ModelPlacement | None = None,
    max_moves: int | None = None,
    copy_cost: float | None = None,
    topology: Topology | None = None,
    num_groups: int | None = None,
    round_us: float = V3_ROUND_US,
) -> ModelPlacement:
    """Plans for decode, or for batches of `batch_size` tokens when it is given; in-sample
    unless `holdout` is given; from `current` with few moves when it is given; node-aware
    with a topology."""
    return moefast.plan(
        trace,
        gpus,
        slots,
        method=method,
        coverage=coverage,
        seed=seed,
        objective="decode" if batch_size is None else "batch",
        batch_size=batch_size,
        cost_model=cost_model,
        holdout=holdout,
        split_by=split_by,
        estimator=estimator,
        time_budget=time_budget,
        work_budget=work_budget,
        current=current,
        max_moves=max_moves,
        copy_cost=copy_cost,
        topology=topology,
        num_groups=num_groups,
        round_us=round_us,
    )


def _topology(args) -> Topology | None:
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


def _print_topology(record: dict) -> None:
    from moefast.topology_plan import headline, time_rows

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


def _check_memory(trace: Trace, gpus: int, slots: int) -> None:
    check_memory(trace.num_experts, gpus, slots)


def _print_comparison(comparison: Comparison, gpus: int, slots: int) -> None:
    print(text_tables.comparison_title(comparison, gpus, slots))
    print(text_tables.format_table(*text_tables.comparison_rows(comparison)))
    if comparison.baselines:
        print(comparison.headline())


def _run_plan(trace: Trace, args, title: str, report_dir: Path | None) -> ModelPlacement:
    """Plan, print the per-layer comparison with the baselines (held-out when the trace is
    large enough), write the report if asked."""
    _check_memory(trace, args.gpus, args.slots)
    batch_size = getattr(args, "batch_size", None)
    cost_model = _cost_model(args) if batch_size is not None else None
    model = _plan(
        trace,
        args.gpus,
        args.slots,
        args.method,
        args.coverage,
        args.seed,
        batch_size,
        cost_model,
        holdout=args.holdout,
        split_by=args.split_by,
        estimator=args.estimator,
        time_budget=getattr(args, "time_budget", None),
        work_budget=getattr(args, "work_budget", None),
        current=_current(args, trace.num_experts, trace.layer_ids),
        max_moves=getattr(args, "max_moves", None),
        copy_cost=getattr(args, "copy_cost", None),
        topology=_topology(args),
        num_groups=getattr(args, "num_groups", None),
        round_us=V3_ROUND_US if getattr(args, "round_us", None) is None else args.round_us,
    )
    comparison = model.evaluation
    assert comparison is not None
    _print_comparison(comparison, args.gpus, args.slots)
    _print_topology_and_replan(model, args)
    print(f"estimator: {model.settings['estimator']}")
    if report_dir is not None:
        folds: list[tuple[np.ndarray, np.ndarray]] = []
        # The learning curve replans with the decode greedy: not for batch-aware plans.
        if comparison.basis == "held-out" and batch_size is None:
            by = args.split_by or default_split_by(trace)
            folds = [split_positions(trace, args.holdout, by, args.seed)]
        _write_report(trace, args, title, report_dir, comparison, folds, model)
    return model


def _print_topology_and_replan(model: ModelPlacement, args) -> None:
    if "topology" in model.settings:
        model.settings["topology"]["preset"] = args.topology
        _print_topology(model.settings["topology"])
    if "replan" in model.settings:
        _print_replan(model.settings["replan"])


def _current(args, num_experts: int, layer_ids: Sequence[int]) -> ModelPlacement | None:
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


def _print_replan(summary: dict) -> None:
    from moefast.replan import curve_rows

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


def _write_report(
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
    curve = None
    sweep, sweep_note = None, "in-sample: planned and scored on all tokens"
    estimator = Estimator(args.coverage)

    def planner(layer_tables) -> list:
        return plan_layers(layer_tables, args.gpus, args.slots, args.method, estimator, args.seed)

    if folds:
        curve = learning_curve(trace, folds, planner, args.gpus, args.slots, args.method, args.seed)
        print(curve.sentence())
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
        )
    hottest = hottest_layer(tables)
    facts = {
        "trace": f"{trace.num_tokens} tokens, {trace.num_layers} layers,"
        f" top-{trace.k} of {trace.num_experts} experts",
        "GPUs": args.gpus,
        "slots per GPU": args.slots,
        "method": f"{args.method} (subsets covering {args.coverage:.0%} of tokens,"
        f" seed {args.seed})",
        "estimator": model.settings.get("estimator", "plain table"),
        "costs": f"{comparison.basis} ({comparison.note})",
    }
    if "topology" in model.settings:
        from moefast.topology_plan import headline

        facts["layer time with communication"] = headline(model.settings["topology"])
    if "replan" in model.settings:
        from moefast.replan import curve_rows

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
    )
    print(f"report: {path}")


def cmd_demo(args) -> int:
    from moefast.data import GPTOSS20B_DECODE

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
    _print_comparison(held_out, args.gpus, args.slots)
    # The placement written out is planned on all answers; its own figures are in-sample.
    model = _plan(trace, args.gpus, args.slots, args.method, args.coverage, args.seed, holdout=None)
    assert model.evaluation is not None
    print(f"the placement written out is planned on all answers: {model.evaluation.headline()}")
    folds = fold_positions(trace, answers, "request", args.seed)
    _write_report(
        trace, args, "moefast demo: gpt-oss-20b decode routing", out, held_out, folds, model
    )
    model.save(out / "placement.json", "json")
    model.save(out / "placement_sglang.json", "sglang", model="gpt-oss-20b")
    print(f"placements: {out / 'placement.json'}, {out / 'placement_sglang.json'}")
    print(f"headline: {held_out.headline()}")
    return 0


def _streaming(args) -> bool:
    """Many files, a chunk size, workers, or an Arrow trace: plan by streaming."""
    from moefast.streaming import is_arrow_trace, trace_files

    files = trace_files(args.trace)
    return (
        len(files) > 1
        or args.chunk_tokens is not None
        or args.ray is not None
        or args.workers is not None
        or is_arrow_trace(files[0])
    )


def cmd_plan(args) -> int:
    from moefast.formats import check_file_name, launch_settings
    from moefast.models import map_positions, model_layout

    # Before the work: a bad output path found after minutes of planning loses them.
    check_writable(args.out, "--out")
    check_file_name(args.out, args.format)
    if args.report is not None:
        check_folder(args.report, "--report")
    moe_layers = None if args.moe_layers is None else _int_list(args.moe_layers, "--moe-layers")
    layout = model_layout(args.model, args.num_layers, moe_layers)
    if layout is None and args.format in ("sglang", "trtllm", "vllm-ascend"):
        raise ValueError(
            f"the {args.format} file holds rows for the model's layers: say which model with"
            " --model (e.g. deepseek-v3) or --num-layers and --moe-layers"
        )
    if _streaming(args):
        from moefast.distributed import plan_files_cli

        if args.layers_are_positions:
            raise ValueError(
                "--layers-are-positions needs one trace read whole; convert the files with"
                " layer ids first, or leave out --chunk-tokens/--workers/--ray"
            )
        current = None
        if args.current is not None:
            from moefast.streaming import trace_files, trace_shape

            # The files' experts and layer ids, from the first file's header (or first
            # chunk): a served placement that does not fit is refused before the counting.
            first = trace_files(args.trace)[0]
            shape = trace_shape(first)
            try:
                current = _current(args, shape.num_experts, shape.layer_ids)
            except ValueError as err:
                raise ValueError(
                    f"--current {args.current} against the trace {first}: {err}"
                ) from None
        else:
            _current(args, 0, [])  # refuses --max-moves/--copy-cost without --current
        # plan() refuses layer ids that are not the model's before the planning work.
        model = plan_files_cli(
            args, _cost_model, _print_comparison, layout, current, _topology(args)
        )
        _print_topology_and_replan(model, args)
        num_experts = model.num_experts
    else:
        trace = load_trace(args.trace[0], args.trace_format)
        if args.layers_are_positions:
            if layout is None:
                raise ValueError("--layers-are-positions needs --model (or --moe-layers)")
            trace = map_positions(trace, layout)
        # Refuse a trace whose layers cannot be the model's before the planning work.
        if layout is not None:
            layout.check_layers(trace.layer_ids, trace.num_experts)
        num_experts = trace.num_experts
        if args.slots is not None:
            args.launch = launch_settings(args.format, args.out, args.gpus, args.slots, num_experts)
        model = _run_plan(trace, args, f"moefast plan: {Path(args.trace[0]).name}", args.report)
    if layout is not None and args.model:
        model.settings["model"] = layout.name
    if getattr(args, "launch", None) is None and args.slots is not None:
        args.launch = launch_settings(args.format, args.out, args.gpus, args.slots, num_experts)
    model.settings["launch"] = getattr(args, "launch", None)
    launch = model.save(args.out, args.format, model=layout, mtp=args.mtp)
    print(f"placement ({args.format}): {args.out}")
    print("start the engine with:")
    for key, value in launch.items():
        print(f"  {key}: {value}")
    return 0


def _int_list(text: str, name: str) -> list[int]:
    """ "3-60" or "1,3,5-9" as a list of ints."""
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError as err:
        raise ValueError(f"{name} must be ids or ranges like 3-60, got {text!r}") from err
    return out


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
        return _print_drift(trace, model, args)
    tables = trace.tables()
    costs = {"placement": model.evaluate(trace)}
    for method in () if args.no_baselines else BASELINES:
        placed = [optimize(t, model.num_gpus, model.slots_per_gpu, method=method) for t in tables]
        costs[method] = np.array([expected_cost(t, p) for t, p in zip(tables, placed, strict=True)])
    comparison = Comparison(
        trace.layer_ids,
        costs,
        np.array([lower_bound(t, model.num_gpus) for t in tables]),
        "placement",
        basis="evaluated",
        note=(
            f"the placement scored on {trace.num_tokens} tokens of {Path(args.trace).name}"
            " (held-out if it was planned on other tokens); baselines planned on these same"
            " tokens (in-sample)"
        ),
    )
    _print_comparison(comparison, model.num_gpus, model.slots_per_gpu)
    return 0


def _print_drift(trace: Trace, model: ModelPlacement, args) -> int:
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


def cmd_inspect(args) -> int:
    trace = load_trace(args.trace, args.trace_format)
    print(
        f"{args.trace}: {trace.num_tokens} tokens, {trace.num_layers} layers"
        f" (ids {trace.layer_ids[0]}..{trace.layer_ids[-1]}), {trace.num_experts} experts,"
        f" k = {trace.k}" + (", weighted" if trace.weights is not None else "")
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


def cmd_synth(args) -> int:
    check_writable(args.out, "--out")
    load = None
    if args.load is not None:
        load = load_expert_load(args.load)
        if load.shape[1] != args.experts:
            raise ValueError(
                f"{args.load}: loads of {load.shape[1]} experts, not --experts {args.experts}"
            )
        if load.shape[0] != args.layers:
            # Cycle the recorded layers so any --layers count keeps real per-layer shapes.
            load = load[np.arange(args.layers) % load.shape[0]]
    trace = synthetic_trace(
        args.tokens,
        args.experts,
        args.k,
        args.layers,
        seed=args.seed,
        expert_load=load,
        topic_strength=args.topic_strength,
        topic_zipf=args.topic_zipf,
    )
    trace.save(args.out)
    print(
        f"wrote {args.out}: {trace.num_tokens} tokens x {trace.num_layers} layers"
        f" x top-{trace.k} of {trace.num_experts}"
    )
    return 0


def _cost_model(args: argparse.Namespace) -> moefast.CostModel:
    if args.preset is not None:
        return moefast.CostModel.preset(args.preset, gpu=args.gpu, p=args.p)
    return moefast.CostModel(args.alpha, args.beta, p=args.p)


def cmd_simulate(args) -> int:
    from moefast.batch_plots import plot_throughput_latency

    out = check_folder(args.out, "--out")
    try:
        sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    except ValueError:
        raise ValueError(
            f"--batch-sizes must be integers separated by commas, got {args.batch_sizes!r}"
        ) from None
    trace = load_trace(args.trace, format=args.trace_format)
    _check_memory(trace, args.gpus, args.slots)
    cm = _cost_model(args)
    placements = {
        "greedy": _plan(trace, args.gpus, args.slots, "greedy", args.coverage, args.seed),
        "contiguous": _plan(trace, args.gpus, args.slots, "contiguous", args.coverage, args.seed),
        "EPLB": _plan(trace, args.gpus, args.slots, "eplb", args.coverage, args.seed),
    }
    if args.batch_aware > 0:
        placements[f"batch-aware (B={args.batch_aware})"] = _plan(
            trace, args.gpus, args.slots, "greedy", args.coverage, args.seed, args.batch_aware, cm
        )
    print(
        f"{cm}; {trace.num_layers} layers, {args.gpus} GPUs x {args.slots} slots,"
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
        results[name] = moefast.simulate(trace, model, sizes, cm, seed=args.seed, steps=args.steps)
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
    print("in-sample step times and latency in the cost model's unit (us):")
    print(text_tables.format_table(header, rows))
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_throughput_latency(
        results,
        out / "throughput_latency.png",
        title=f"Decode throughput vs latency, {args.gpus} GPUs x {args.slots} slots",
    )
    print(f"plot: {plot}")
    return 0


def _at_least(low: int):
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


def _cost_model_options(p: argparse.ArgumentParser) -> None:
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


def _placement_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpus", type=_at_least(1), required=True, help="number of GPUs (expert-parallel ranks)"
    )
    p.add_argument("--slots", type=_at_least(1), required=True, help="experts each GPU can hold")
    _planning_options(p, "greedy (default), milp, contiguous, round_robin, eplb")


def _planning_options(p: argparse.ArgumentParser, method_help: str) -> None:
    p.add_argument("--method", default="greedy", help=method_help)
    p.add_argument(
        "--coverage",
        type=float,
        default=0.99,
        help="share of tokens the planned subsets cover (0.99)",
    )
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument(
        "--no-sweep", action="store_true", help="leave the slots-per-GPU sweep out of the report"
    )


def _trace_format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace-format",
        choices=TRACE_FORMATS,
        default=None,
        help="trace format (guessed when left out)",
    )


def cmd_convert(args) -> int:
    from moefast.streaming import convert

    options = {"format": args.trace_format} if args.trace_format else {}
    tokens = convert(args.trace, args.out, chunk_tokens=args.chunk_tokens, **options)
    print(f"{tokens} tokens written to {args.out} (Arrow IPC, {args.chunk_tokens} tokens a batch)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moefast", description="Co-activation-aware placement of MoE experts on GPUs."
    )
    parser.add_argument("--version", action="version", version=f"moefast {moefast.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="plan the bundled gpt-oss-20b trace and write a report",
        description="Plans the bundled gpt-oss-20b decode trace (three answers), prints the"
        " held-out cost of every layer against the baselines (each answer scored by placements"
        " planned on the other two, with a bootstrap 95% interval of the gain) and writes a"
        " Markdown report with the learning curve and plots, and the placement planned on all"
        " answers.",
    )
    p.add_argument("--out", default="moefast-demo", help="report folder (moefast-demo)")
    p.add_argument("--gpus", type=_at_least(1), default=4, help="number of GPUs (4)")
    p.add_argument(
        "--slots",
        type=_at_least(1),
        default=None,
        help="experts per GPU (default: 1.25 x experts / GPUs)",
    )
    _planning_options(p, argparse.SUPPRESS)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser(
        "plan",
        help="compute a placement from a trace",
        description="Computes a placement of every MoE layer and writes it for an engine.",
    )
    p.add_argument(
        "trace",
        nargs="+",
        help="routing trace(s) (.npz, .jsonl, .arrow, SGLang per_token .pt or folder, folders of"
        " shards); several files, --chunk-tokens, --workers or --ray plan by streaming",
    )
    _placement_options(p)
    p.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help="read the traces this many tokens at a time (memory holds the tables, not the trace)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="count files and plan layers in this many local processes",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="count and plan on a Ray cluster: 'local', 'auto' or ray://HOST:10001"
        " (pip install 'moefast[ray]')",
    )
    p.add_argument(
        "--format",
        default="sglang",
        choices=PLACEMENT_FORMATS,
        help="placement file format (sglang)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model preset giving its layers (deepseek-v3, qwen3-30b-a3b, mixtral-8x7b, ...;"
        " see moefast.models.PRESETS)",
    )
    p.add_argument(
        "--num-layers", type=_at_least(1), default=None, help="the model's decoder layer count"
    )
    p.add_argument("--moe-layers", default=None, help="the model's MoE layer ids, as ranges: 3-60")
    p.add_argument(
        "--layers-are-positions",
        action="store_true",
        help="the trace numbers its layers 0..L-1: map them to the model's first L MoE layers",
    )
    p.add_argument(
        "--mtp",
        action="store_true",
        help="add the model's MTP layers (TensorRT-LLM and vLLM-Ascend files)",
    )
    p.add_argument("--out", required=True, help="placement file to write")
    p.add_argument("--report", type=Path, default=None, help="also write a report into this folder")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop the greedy's searches when the plan has taken this long (not deterministic)",
    )
    p.add_argument(
        "--work-budget",
        type=int,
        default=None,
        metavar="ROWS",
        help="stop the greedy's searches after this many rows read in all (deterministic)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of tokens held out to score the plan and the baselines on (0.2; 0: in-sample;"
        " off by itself below 500 tokens)",
    )
    p.add_argument(
        "--split-by",
        choices=SPLIT_BY,
        default=None,
        help="hold out the last tokens (time) or whole requests (request); default: request"
        " when the trace knows at least 5 requests",
    )
    p.add_argument(
        "--estimator",
        choices=ESTIMATOR_CHOICES,
        default="plain",
        help="table to plan on: plain (the empirical table pruned to --coverage) or auto (that"
        " or the unpruned table, chosen by cross-validation on the train part)",
    )
    p.add_argument(
        "--batch-size",
        type=_at_least(1),
        default=None,
        metavar="B",
        help="optimize the mean step time of batches of B tokens (cost model below)"
        " instead of decode",
    )
    p.add_argument(
        "--current",
        default=None,
        metavar="FILE",
        help="the placement being served (any placement format moefast reads): re-plan from it",
    )
    p.add_argument("--current-format", choices=PLACEMENT_FORMATS, default=None)
    p.add_argument(
        "--max-moves",
        type=_at_least(0),
        default=None,
        metavar="M",
        help="with --current: at most M weight copies per layer (replace/relocate 1, swap 2)",
    )
    p.add_argument(
        "--copy-cost",
        type=float,
        default=None,
        metavar="ROUNDS",
        help="with --current: make a move only if it gains more than this many expert rounds"
        " per token per copy (moefast.replan.price_per_copy; with --topology, times"
        " --round-us us per token per copy)",
    )
    p.add_argument(
        "--topology",
        choices=TOPOLOGY_PRESETS,
        default=None,
        metavar="PRESET",
        help="plan node-aware for this topology (h800_normal, h800_low_latency: DeepEP's H800"
        " figures) and report modeled layer times with communication against EPLB",
    )
    p.add_argument(
        "--gpus-per-node",
        type=_at_least(1),
        default=None,
        metavar="N",
        help="with --topology: GPUs per node (8); --gpus must be a multiple",
    )
    p.add_argument(
        "--num-groups",
        type=_at_least(1),
        default=None,
        metavar="G",
        help="with --topology: keep each of G groups of consecutive expert ids on one node"
        " (group-limited routing: 8 for DeepSeek-V3)",
    )
    p.add_argument(
        "--round-us",
        type=float,
        default=None,
        metavar="US",
        help=f"with --topology, decode: time of one expert round in us ({V3_ROUND_US:g}:"
        " a DeepSeek-V3 expert on an H100); batches use --alpha/--beta/--p",
    )
    _cost_model_options(p)
    _trace_format_option(p)
    p.set_defaults(run=cmd_plan)

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
        type=_at_least(1),
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
        type=_at_least(1),
        default=None,
        metavar="N",
        help="drift: the model's cost on N consecutive windows beside re-planned placements",
    )
    _trace_format_option(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser(
        "inspect",
        help="statistics of a trace",
        description="Tokens, layers, experts, k; subsets needed for 80/90/99%% coverage,"
        " expert load skew and the most co-activated pairs.",
    )
    p.add_argument("trace")
    p.add_argument("--pairs", type=_at_least(0), default=5, help="how many pairs to list (5)")
    _trace_format_option(p)
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser(
        "synth",
        help="write a realistic synthetic trace",
        description="Writes a synthetic trace with skewed, co-activated expert choices"
        " (see moefast.synthetic.synthetic_trace).",
    )
    p.add_argument("--experts", type=_at_least(1), required=True)
    p.add_argument("--k", type=_at_least(1), required=True, help="experts per token")
    p.add_argument("--layers", type=_at_least(1), required=True)
    p.add_argument("--tokens", type=_at_least(1), required=True)
    p.add_argument(
        "--load",
        type=Path,
        default=None,
        help="per-expert loads to match (SGLang logical_count JSON, .npy,"
        " TensorRT-LLM folder, trace)",
    )
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--topic-strength", type=float, default=3.0, help="co-activation strength (3.0)")
    p.add_argument(
        "--topic-zipf", type=float, default=1.1, help="Zipf exponent of topic popularity (1.1)"
    )
    p.add_argument("--out", required=True, help="trace file to write (.npz)")
    p.set_defaults(run=cmd_synth)

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
    _trace_format_option(p)
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser(
        "simulate",
        help="throughput and latency of batches for several placements",
        description="Simulates decode steps of several batch sizes for the greedy, batch-aware,"
        " contiguous and EPLB placements of a trace (cost model of DESIGN 2.2), prints step"
        " times, throughput and latency, and plots the throughput/latency curve.",
    )
    p.add_argument("trace")
    _placement_options(p)
    p.add_argument(
        "--batch-sizes", default="1,4,16,64,256,1024", help="comma-separated (1,4,16,64,256,1024)"
    )
    p.add_argument(
        "--steps", type=_at_least(1), default=300, help="simulated steps per batch size (300)"
    )
    p.add_argument(
        "--batch-aware",
        type=_at_least(0),
        default=64,
        metavar="B",
        help="also plan batch-aware placements for batch size B (64; 0 to skip)",
    )
    _cost_model_options(p)
    p.add_argument(
        "--out", default="moefast-simulate", help="folder for the plot (moefast-simulate)"
    )
    _trace_format_option(p)
    p.set_defaults(run=cmd_simulate)
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


if __name__ == "__main__":
    sys.exit(main())
