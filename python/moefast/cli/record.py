"""``moefast record``: a trace recorded from a running SGLang or vLLM server."""

from __future__ import annotations

from typing import Any

from moefast.io.recording import record


def cmd_record(args) -> int:
    sent = record(
        args.url,
        args.prompts,
        args.out,
        engine=args.engine,
        num_layers=args.num_layers,
        k=args.top_k,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        model=args.model,
        timeout=args.timeout,
        progress_bar=not args.quiet,
    )
    print(f"{sent} prompts recorded to {args.out} (read it with load_trace or any command)")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "record",
        help="record a trace from a running server with routed experts on",
        description='Sends the prompts (JSON Lines: {"id": ..., "text": ...}) to an SGLang'
        " or vLLM server started with --enable-return-routed-experts and appends each response,"
        " with the experts its tokens were routed to, to a JSON Lines trace. Run it again after"
        " a failure: prompts already recorded are skipped.",
    )
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:30000")
    p.add_argument("--prompts", required=True, help="JSON Lines of prompts")
    p.add_argument("--out", required=True, help="JSON Lines of responses to write or resume")
    p.add_argument("--engine", choices=("sglang", "vllm"), default="sglang", help="(sglang)")
    p.add_argument("--num-layers", type=int, help="MoE layers of the model (SGLang needs it)")
    p.add_argument("--top-k", type=int, help="experts per token of the model (SGLang needs it)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate (16)")
    p.add_argument("--concurrency", type=int, default=8, help="requests at a time (8)")
    p.add_argument("--model", help="model name for vLLM's API (default: the one it serves)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (600)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_record)
