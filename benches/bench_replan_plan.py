"""Re-planning trace files with `moefast plan --current`, not run in CI:

    python benches/bench_replan_plan.py [--layers 3] [--tokens 40000] [--chunk-tokens 5000]

DeepSeek-V3-size layers (`bench_topology`: 256 experts, top-8 with 4 of 8 groups per
token; 32 GPUs of 9 slots, 4 nodes of 8): a placement planned on one request mix is served,
the mix shifts (`bench_replan`'s "request mix" shift), and the new trace, written as 4 npz
shards and as one file, is re-planned from the served placement with at most 29 copies per
layer (10% of the slots). Each command runs in a child process; the table gives its CPU
seconds (user + system, of the child and its workers) and wall seconds, the streamed runs
against the one-file (in-memory) run of the same command, and whether the placements are
identical (they must be: `--holdout 0`, the same tables). The same with `--topology
h800_normal` (the node-aware re-plan), and streamed on 2 worker processes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import moefast as mf
import numpy as np
from bench_topology import SLOTS, E, G, group_limited_topk

MOVES = 29  # 10% of the 288 slots


def write_traces(folder: Path, layers: int, tokens: int) -> tuple[Path, list[Path], Path]:
    """The served trace, the shifted trace as shards, and the shifted trace in one file."""
    ids = list(range(3, 3 + layers))
    before = np.stack([group_limited_topk(tokens // 2, seed=10 + i) for i in ids], axis=1)
    after = np.stack([group_limited_topk(tokens, seed=10 + i, mix_seed=5) for i in ids], axis=1)
    served = folder / "served.npz"
    mf.Trace(before, E, ids).save(served)
    whole = folder / "after.npz"
    mf.Trace(after, E, ids).save(whole)
    shards = []
    for s, part in enumerate(np.array_split(np.arange(tokens), 4)):
        shards.append(folder / f"after{s}.npz")
        mf.Trace(after[part], E, ids).save(shards[-1])
    return served, shards, whole


def run(args: list[str]) -> tuple[float, float]:
    """(CPU s, wall s) of `moefast ARGS` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "moefast"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"moefast {' '.join(args)} failed:\n{done.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def replicas(path: Path) -> list[np.ndarray]:
    return [p.replicas for p in mf.load_placement(path)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=40_000)
    parser.add_argument("--chunk-tokens", type=int, default=5_000)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        served_trace, shards, whole = write_traces(folder, opts.layers, opts.tokens)
        common = ["--gpus", str(G), "--slots", str(SLOTS), "--format", "json", "--holdout", "0"]
        served = folder / "served.json"
        run(["plan", str(served_trace), *common, "--out", str(served)])
        replan = ["--current", str(served), "--max-moves", str(MOVES)]
        topo = ["--topology", "h800_normal", "--gpus-per-node", "8"]
        stream = ["--chunk-tokens", str(opts.chunk_tokens)]
        cases = [
            ("compute-only, one file (in memory)", [str(whole)], []),
            ("compute-only, 4 shards streamed", list(map(str, shards)), stream),
            ("compute-only, 4 shards, 2 workers", list(map(str, shards)), ["--workers", "2"]),
            ("node-aware, one file (in memory)", [str(whole)], topo),
            ("node-aware, 4 shards streamed", list(map(str, shards)), [*stream, *topo]),
        ]
        rows = []
        reference: dict[bool, tuple[float, list[np.ndarray]]] = {}
        for label, files, extra in cases:
            out = folder / f"{len(rows)}.json"
            cpu, wall = run(["plan", *files, *common, *replan, *extra, "--out", str(out)])
            got = replicas(out)
            node_aware = "--topology" in extra
            if node_aware not in reference:
                reference[node_aware] = (cpu, got)
            base_cpu, want = reference[node_aware]
            same = all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
            copies = json.loads(out.read_text())["settings"]["replan"]["copies"]
            rows.append((label, cpu, wall, cpu / base_cpu, same, copies))
    print(
        f"{opts.layers} layers x {opts.tokens} tokens, {G} GPUs x {SLOTS} slots,"
        f" --max-moves {MOVES}, --chunk-tokens {opts.chunk_tokens}"
    )
    print(f"{'run':38} {'CPU s':>7} {'wall s':>7} {'CPU/in-memory':>14}  identical  copies")
    for label, cpu, wall, ratio, same, copies in rows:
        print(f"{label:38} {cpu:7.1f} {wall:7.1f} {ratio:14.2f}  {same!s:9}  {copies}")


if __name__ == "__main__":
    main()
