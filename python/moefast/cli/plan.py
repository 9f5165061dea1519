"""``moefast plan``: a placement of every MoE layer of a trace, written for an engine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moefast._util.atomic import check_folder, check_not_input, check_writable
from moefast._util.progress import stage
from moefast.cli.options import (
    METHOD_HELP,
    at_least,
    cluster_options,
    cost_model_and_source,
    cost_model_from_args,
    cost_model_options,
    int_list,
    moves_option,
    planning_options,
    topology_from_args,
    trace_format_option,
)
from moefast.cli.output import (
    plan_files_cli,
    print_comparison,
    print_serving,
    print_topology_and_replan,
    print_verdict,
    profile_words,
    run_plan,
    served_placement,
    serving_profile,
)
from moefast.evaluate.selection import ESTIMATOR_CHOICES
from moefast.evaluate.serving import record_dispatch, settings_rows
from moefast.io.engines import PLACEMENT_FORMATS, check_file_name, launch_settings
from moefast.io.engines.dispatch import DISPATCHES
from moefast.io.layouts import map_positions, model_layout
from moefast.io.provenance import load_trace
from moefast.io.readers import load_expert_load
from moefast.io.readers.arrow import is_arrow_trace
from moefast.io.readers.sglang import is_load_dump
from moefast.io.readers.trtllm import is_trtllm_raw
from moefast.io.streaming import trace_files, trace_shape
from moefast.moves import ROUND_US
from moefast.planning.loads import loads_only_statement, plan_from_loads
from moefast.report.text_tables import format_table
from moefast.splits import SPLIT_BY
from moefast.topology.times import PRESETS as TOPOLOGY_PRESETS


def is_streaming(args) -> bool:
    """Many files, a chunk size, workers, or an Arrow trace: plan by streaming."""

    files = trace_files(args.trace)
    return (
        len(files) > 1
        or args.chunk_tokens is not None
        or args.ray is not None
        or args.workers is not None
        or is_arrow_trace(files[0])
    )


def load_source(paths: list[str]) -> str | None:
    """The engine whose per-expert loads alone ``paths`` hold: "sglang" for one
    ``logical_count`` JSON or SGLang ``stat``/``per_pass`` ``.pt`` dump(s), "trtllm" for a
    TensorRT-LLM statistics folder without per-token ids (``rank<r>.safetensors`` counts
    only), "npy" for a ``.npy`` array; None for a routing trace."""
    if len(paths) != 1:
        return None
    path = Path(paths[0])
    if path.suffix.lower() == ".npy":
        return "npy"
    if path.suffix.lower() == ".json" and path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            return "sglang" if '"logical_count"' in f.read(4096) else None
    if path.is_dir() and (path / "meta_info.json").is_file():
        return None if is_trtllm_raw(path) else "trtllm"
    is_dumps = path.suffix.lower() == ".pt" or (path.is_dir() and any(path.glob("*.pt")))
    if is_dumps and path.exists():
        return "sglang" if is_load_dump(path) else None
    return None


def plan_loads_cli(args, layout, source_engine: str) -> int:
    """``moefast plan LOADS``: the best placement loads alone allow, with the number of
    redundant experts that is fastest on the profile."""
    if layout is None or layout.k is None:
        raise ValueError(
            "a loads file has no top-k: name the model with --model (e.g. deepseek-v3)"
        )
    load, layer_ids = load_expert_load(
        args.trace[0], return_layer_ids=True, num_experts=layout.num_experts
    )
    layout.check_layers(layer_ids, load.shape[1])
    cost_model, source = cost_model_and_source(args)
    profile = serving_profile(args)
    assert profile is not None  # --current and --topology are not loads options
    print(loads_only_statement(source_engine))
    result = plan_from_loads(
        load, layer_ids, args.gpus, args.slots, layout.k, profile, cost_model, seed=args.seed
    )
    serving = result.model.settings["serving"]
    print(
        f"serving profile ({profile_words(args)}); simulated step time per candidate, summed"
        f" over {len(layer_ids)} layers, {serving['note']}; {record_dispatch(serving)};"
        f" {source}; * recommended:"
    )
    print(format_table(*settings_rows(serving)))
    print_verdict(serving, args.format)
    model = result.model
    model.settings["model"] = layout.name
    launch = launch_settings(args.format, args.out, args.gpus, result.slots_per_gpu, load.shape[1])
    model.settings["launch"] = launch
    launch = model.save(args.out, args.format, model=layout, mtp=args.mtp)
    print(f"placement ({args.format}): {args.out}")
    print("start the engine with:")
    for key, value in launch.items():
        print(f"  {key}: {value}")
    return 0


def cmd_plan(args) -> int:

    # Before the work: a bad output path found after minutes of planning loses them.
    check_writable(args.out, "--out")
    inputs = [*args.trace, args.current]
    check_not_input(args.out, inputs, "--out")
    check_file_name(args.out, args.format)
    if args.report is not None:
        check_folder(args.report, "--report")
        check_not_input(args.report, inputs, "--report")
    moe_layers = None if args.moe_layers is None else int_list(args.moe_layers, "--moe-layers")
    layout = model_layout(args.model, args.num_layers, moe_layers)
    if layout is None and args.format in ("sglang", "trtllm", "vllm-ascend"):
        raise ValueError(
            f"the {args.format} file holds rows for the model's layers: say which model with"
            " --model (e.g. deepseek-v3) or --num-layers and --moe-layers"
        )
    source = load_source(args.trace)
    if source is not None:
        # The recording flags of the engine that wrote the loads (a .npy: the output's).
        return plan_loads_cli(args, layout, args.format if source == "npy" else source)
    # At once, before a large trace is read: a pipe sees the run is alive.
    stage(f"moefast plan: reading {', '.join(args.trace)}", not args.quiet)
    if is_streaming(args):
        if args.layers_are_positions:
            raise ValueError(
                "--layers-are-positions needs one trace read whole; convert the files with"
                " layer ids first, or leave out --chunk-tokens/--workers/--ray"
            )
        current = None
        if args.current is not None:
            # The files' experts and layer ids, from the first file's header (or first
            # chunk): a served placement that does not fit is refused before the counting.
            first = trace_files(args.trace)[0]
            shape = trace_shape(first)
            try:
                current = served_placement(args, shape.num_experts, shape.layer_ids)
            except ValueError as err:
                raise ValueError(
                    f"--current {args.current} against the trace {first}: {err}"
                ) from None
        else:
            served_placement(args, 0, [])  # refuses --max-moves/--copy-cost without --current
        # plan() refuses layer ids that are not the model's before the planning work.
        model = plan_files_cli(
            args, cost_model_from_args, print_comparison, layout, current, topology_from_args(args)
        )
        print_topology_and_replan(model, args)
        print_serving(model, args)
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
        model = run_plan(trace, args, f"moefast plan: {Path(args.trace[0]).name}", args.report)
    if layout is not None and args.model:
        model.settings["model"] = layout.name
    if getattr(args, "launch", None) is None and args.slots is not None:
        args.launch = launch_settings(
            args.format, args.out, args.gpus, model.slots_per_gpu, num_experts
        )
    model.settings["launch"] = getattr(args, "launch", None)
    launch = model.save(args.out, args.format, model=layout, mtp=args.mtp)
    print(f"placement ({args.format}): {args.out}")
    print("start the engine with:")
    for key, value in launch.items():
        print(f"  {key}: {value}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="compute a placement from a trace",
        description="Computes a placement of every MoE layer and writes it for an engine.",
    )
    io = p.add_argument_group("input and output")
    cluster = p.add_argument_group("cluster (moefast.Cluster)")
    search = p.add_argument_group("search (plan's method and seed)")
    objective = p.add_argument_group(
        "objective (moefast.Objective) and its cost model (moefast.CostModel)"
    )
    profile = p.add_argument_group("serving profile (moefast.ServingProfile)")
    evaluation = p.add_argument_group("evaluation (moefast.Evaluation)")
    budget = p.add_argument_group("compute budget (moefast.Budget)")
    moves = p.add_argument_group("re-planning (moefast.MoveBudget)")
    io.add_argument(
        "trace",
        nargs="+",
        help="routing trace(s) (.npz, .jsonl, .arrow, SGLang per_token .pt or folder, folders of"
        " shards); several files, --chunk-tokens, --workers or --ray plan by streaming",
    )
    cluster_options(cluster)
    planning_options(search, METHOD_HELP, coverage_group=evaluation)
    io.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help="read the traces this many tokens at a time (memory holds the tables, not the trace)",
    )
    io.add_argument(
        "--workers",
        type=int,
        default=None,
        help="count files and plan layers in this many local processes",
    )
    io.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="count and plan on a Ray cluster: 'local', 'auto' or ray://HOST:10001"
        " (pip install 'moefast[ray]')",
    )
    io.add_argument(
        "--format",
        default="sglang",
        choices=PLACEMENT_FORMATS,
        help="placement file format (sglang)",
    )
    io.add_argument(
        "--model",
        default=None,
        help="model preset giving its layers (deepseek-v3, qwen3-30b-a3b, mixtral-8x7b, ...;"
        " see moefast.io.layouts.PRESETS)",
    )
    io.add_argument(
        "--num-layers", type=at_least(1), default=None, help="the model's decoder layer count"
    )
    io.add_argument("--moe-layers", default=None, help="the model's MoE layer ids, as ranges: 3-60")
    io.add_argument(
        "--layers-are-positions",
        action="store_true",
        help="the trace numbers its layers 0..L-1: map them to the model's first L MoE layers",
    )
    io.add_argument(
        "--mtp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the model's MTP layers (default: in TensorRT-LLM files, which the engine"
        " needs under speculative decoding; --mtp adds them to vLLM-Ascend files too)",
    )
    io.add_argument("--out", required=True, help="placement file to write")
    io.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr (default: a line as each stage starts, then a bar on a"
        " terminal, a line per layer or candidate otherwise)",
    )
    io.add_argument(
        "--report", type=Path, default=None, help="also write a report into this folder"
    )
    budget.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop the greedy's searches when the plan has taken this long (not deterministic)",
    )
    budget.add_argument(
        "--work-budget",
        type=int,
        default=None,
        metavar="ROWS",
        help="stop the greedy's searches after this many rows read in all (deterministic)",
    )
    evaluation.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of tokens held out to score the plan and the baselines on (0.2; 0: in-sample;"
        " off by itself below 500 tokens)",
    )
    evaluation.add_argument(
        "--split-by",
        choices=SPLIT_BY,
        default=None,
        help="hold out the last tokens (time) or whole requests (request); default: request"
        " when the trace knows at least 5 requests",
    )
    evaluation.add_argument(
        "--estimator",
        choices=ESTIMATOR_CHOICES,
        default="plain",
        help="table to plan on: plain (the empirical table pruned to --coverage) or auto (that"
        " or the unpruned table, chosen by cross-validation on the train part)",
    )
    objective.add_argument(
        "--batch-size",
        type=at_least(1),
        default=None,
        metavar="B",
        help="optimize the mean step time of batches of B tokens (cost model below)"
        " instead of decode",
    )
    profile.add_argument(
        "--batch-sizes",
        default=None,
        metavar="SIZES",
        help="serving profile: the batch sizes served, with optional shares (1,16,64,256 or"
        " 1:0.2,64:0.8); every candidate (this plan, batch-aware per size, EPLB, round-robin,"
        " contiguous, the engine's default map) is simulated on the held-out tokens at each"
        " size and the one of least expected step time is written, each also with fewer"
        " redundant experts, down to none (default: B = 1 and 64, no batch-aware search)",
    )
    profile.add_argument(
        "--dispatch",
        choices=DISPATCHES,
        default=None,
        help="the replica routing the profile's figures assume (default: the engine's, from"
        " --format: sglang-static for sglang, trtllm, vllm-ascend; best for eplb and native);"
        " best: the best replica choice, which no engine runs",
    )
    moves.add_argument(
        "--current",
        default=None,
        metavar="FILE",
        help="the placement being served (any placement format moefast reads): re-plan from it",
    )
    moves.add_argument("--current-format", choices=PLACEMENT_FORMATS, default=None)
    moves.add_argument(
        "--max-moves",
        type=moves_option,
        default=None,
        metavar="M",
        help="with --current: at most M weight copies per layer (replace/relocate 1, swap 2),"
        " or a share of the layer's slots (10%%); each copy is one slot whose expert changes"
        " (a replica that stays keeps its slot)",
    )
    moves.add_argument(
        "--copy-cost",
        type=float,
        default=None,
        metavar="ROUNDS",
        help="with --current: make a move only if it gains more than this many expert rounds"
        " per token per copy (moefast.moves.price_per_copy; with --topology, times"
        " --round-us us per token per copy)",
    )
    cluster.add_argument(
        "--topology",
        choices=TOPOLOGY_PRESETS,
        default=None,
        metavar="PRESET",
        help="plan node-aware for this topology (h800_normal, h800_low_latency: DeepEP's H800"
        " figures) and report modeled layer times with communication against EPLB",
    )
    cluster.add_argument(
        "--gpus-per-node",
        type=at_least(1),
        default=None,
        metavar="N",
        help="with --topology: GPUs per node (8); --gpus must be a multiple",
    )
    cluster.add_argument(
        "--num-groups",
        type=at_least(1),
        default=None,
        metavar="G",
        help="with --topology: keep each of G groups of consecutive expert ids on one node"
        " (group-limited routing: 8 for DeepSeek-V3)",
    )
    cluster.add_argument(
        "--round-us",
        type=float,
        default=None,
        metavar="US",
        help=f"with --topology, decode: time of one expert round in us ({ROUND_US:g}:"
        " a DeepSeek-V3 expert on an H100); batches use --alpha/--beta/--p",
    )
    cost_model_options(objective)
    trace_format_option(io)
    p.set_defaults(run=cmd_plan)
