"""``moefast synth``: a synthetic trace with skewed loads and co-activation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moefast._util.atomic import check_not_input, check_writable
from moefast.cli.options import at_least
from moefast.io.readers import load_expert_load
from moefast.io.synthetic import synthetic_trace


def cmd_synth(args) -> int:
    check_writable(args.out, "--out")
    check_not_input(args.out, [args.load], "--out")
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "synth",
        help="write a realistic synthetic trace",
        description="Writes a synthetic trace with skewed, co-activated expert choices"
        " (see moefast.io.synthetic.synthetic_trace).",
    )
    p.add_argument("--experts", type=at_least(1), required=True)
    p.add_argument("--k", type=at_least(1), required=True, help="experts per token")
    p.add_argument("--layers", type=at_least(1), required=True)
    p.add_argument("--tokens", type=at_least(1), required=True)
    p.add_argument(
        "--load",
        type=Path,
        default=None,
        help="per-expert loads to match (SGLang logical_count JSON, .npy,"
        " TensorRT-LLM folder, trace)",
    )
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--topic-strength", type=float, default=3.0, help="co-activation strength (3.0)")
    p.add_argument(
        "--topic-zipf", type=float, default=1.1, help="Zipf exponent of topic popularity (1.1)"
    )
    p.add_argument("--out", required=True, help="trace file to write (.npz)")
    p.set_defaults(run=cmd_synth)
