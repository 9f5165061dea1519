"""Measures MoE expert FFN time vs tokens on the GPU it runs on and fits the batch cost
model f(n) = (alpha^p + (beta*n)^p)^(1/p) (docs/cost-model.md#a-batch).

For each expert shape, t distinct bf16 SwiGLU experts (gate, up: intermediate x hidden;
down: hidden x intermediate) run one after the other on n tokens each. Each (t, n)
workload is captured in a CUDA graph and replayed, so kernel-launch overhead does not
hide the weight-read and compute costs the model describes. Writes the same JSON layout
as shared/calibration/h100_expert_ffn_graphs.json, plus the fitted alpha, beta and p.

    python scripts/gpu_calibrate.py --out h100_calibration.json [--models mixtral-8x7b deepseek-v3]

Needs torch with CUDA; without it the script says so and exits 0 (it stays importable).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

try:
    import torch
except ImportError:  # the module must import (and do nothing) where torch is absent
    torch = None

from moefast.batch.cost_model import EXPERT_SHAPES, CostModel

DEFAULT_MODELS = ["mixtral-8x7b", "deepseek-v3", "deepseek-v2-lite", "qwen3-30b-a3b", "olmoe-1b-7b"]
EXPERTS = [1, 2, 4, 8]
TOKENS = [1, 16, 128, 512, 2048]


def _experts_fn(weights, x):
    """t experts one after the other on the same tokens (each expert's output kept so
    no work is dead)."""
    out = []
    for gate, up, down in weights:
        h = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
        out.append(h @ down.T)
    return out


def time_workload(weights, tokens: int, hidden: int, replays: int, repeats: int) -> float:
    """Median microseconds of one replay of the captured t-expert workload."""
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the graph (cuBLAS picks its kernels)
            _experts_fn(weights, x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _experts_fn(weights, x)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) * 1000 / replays)
    del graph
    return statistics.median(samples)


def calibrate(
    models: list[str], experts: list[int], tokens: list[int], replays: int, repeats: int
) -> dict:
    out = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "method": "CUDA graph, bf16 SwiGLU, t distinct experts sequential, n tokens each",
        "models": {},
    }
    for name in models:
        hidden, intermediate = EXPERT_SHAPES[name]
        # Distinct experts: every run reads fresh weights, as an MoE layer does.
        weights = [
            tuple(
                torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 0.02
                for shape in (
                    (intermediate, hidden),
                    (intermediate, hidden),
                    (hidden, intermediate),
                )
            )
            for _ in range(max(experts))
        ]
        points = []
        for t in experts:
            for n in tokens:
                us = time_workload(weights[:t], n, hidden, replays, repeats)
                points.append({"experts": t, "tokens": n, "us": round(us, 2)})
                print(f"{name}: {t} experts x {n} tokens: {us:.1f} us", file=sys.stderr)
        fit = CostModel.fit(
            [q["tokens"] for q in points], [q["us"] for q in points], [q["experts"] for q in points]
        )
        for q, err in zip(points, fit.rel_errors, strict=True):
            q["fit_rel_err"] = round(float(err), 4)
        out["models"][name] = {
            "hidden": hidden,
            "intermediate": intermediate,
            "bytes_per_expert": 3 * hidden * intermediate * 2,
            "points": points,
            "fit": {
                "alpha_us": fit.model.alpha,
                "beta_us_per_token": fit.model.beta,
                # Strict JSON has no infinity: the hard maximum is written as the string "inf".
                "p": fit.model.p if math.isfinite(fit.model.p) else "inf",
                "max_rel_err": fit.max_rel_err,
                "mean_rel_err": fit.mean_rel_err,
            },
        }
        del weights
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_calibration.json", help="JSON file to write")
    parser.add_argument(
        "--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(EXPERT_SHAPES)
    )
    parser.add_argument("--experts", nargs="+", type=int, default=EXPERTS)
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--replays", type=int, default=20, help="graph replays per timing")
    parser.add_argument("--repeats", type=int, default=7, help="timings per point (median)")
    args = parser.parse_args(argv)
    if torch is None or not torch.cuda.is_available():
        print("gpu_calibrate: torch with a CUDA GPU is needed; nothing measured", file=sys.stderr)
        return 0
    result = calibrate(args.models, args.experts, args.tokens, args.replays, args.repeats)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for name, entry in result["models"].items():
        fit = entry["fit"]
        print(
            f"{name}: alpha {fit['alpha_us']:.2f} us, beta {fit['beta_us_per_token']:.5f} us/token,"
            f" p {fit['p']}, max error {fit['max_rel_err']:.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
