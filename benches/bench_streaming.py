"""Planning a trace larger than memory, not run in CI:

    python benches/bench_streaming.py [--gb 5] [--dir /tmp/moefast-bench] [--ray]

Writes a DeepSeek-V3-shaped synthetic trace (58 MoE layers, 256 experts, top-8) of at least
``--gb`` GB as Arrow shards of 500k tokens (uint8 ids, 464 bytes a token), plans it with
`plan(files, chunk_tokens=...)` in a child process (held out: the last 20% of each shard)
and prints its peak resident memory (target <= 2 GB) and tokens per second, against the
in-memory path (`load_trace` + `plan`, the last 20% held out) on one shard, the size that
fits in memory beside the others (target: streaming >= 50% of its tokens per second).
With ``--ray`` it also measures counting alone: one core (RAYON_NUM_THREADS=1), and the
Ray path with 1 and 2 workers. The shards are deleted at the end.

Routing: one skewed, correlated 200k-token routing of moefast.io.synthetic (DeepSeek-scale
settings, as benches/bench_plan.py), experts relabelled per layer; every shard draws its
tokens from it at random, so each layer's table holds at most 200k subsets however long the
trace (real decode routing repeats its subsets too), while the shards hold distinct bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LAYERS, EXPERTS, K, POOL, GPUS, SLOTS = 58, 256, 8, 200_000, 32, 9
SHARD_TOKENS = 500_000
CHUNK_TOKENS = 250_000


@dataclass
class RawChunk:
    """What write_arrow_trace reads of a Trace, without its validation."""

    topk: np.ndarray
    num_experts: int = EXPERTS
    layer_ids: list[int] = field(default_factory=lambda: list(range(3, 3 + LAYERS)))
    weights: None = None
    k: int = K

    @property
    def num_tokens(self) -> int:
        return self.topk.shape[0]

    @property
    def num_layers(self) -> int:
        return self.topk.shape[1]


def write_shards(folder: Path, gigabytes: float) -> list[Path]:
    from moefast.io.readers.arrow import write_arrow_trace
    from moefast.io.synthetic import synthetic_topk

    base = synthetic_topk(
        POOL,
        EXPERTS,
        K,
        seed=7,
        num_topics=512,
        topic_zipf=1.0,
        preferred=2 * K,
        boost=(1.5, 3.5),
        popularity_skew=0.8,
        noise=0.4,
    ).astype(np.uint8)
    rng = np.random.default_rng(8)
    perms = np.stack([rng.permutation(EXPERTS) for _ in range(LAYERS)]).astype(np.uint8)
    bytes_per_shard = SHARD_TOKENS * LAYERS * K
    shards = int(np.ceil(gigabytes * 1e9 / bytes_per_shard))
    paths = []
    for s in range(shards):
        rows = base[rng.integers(0, POOL, SHARD_TOKENS)]
        topk = np.stack([perms[layer][rows] for layer in range(LAYERS)], axis=1)
        # The ids are valid by construction: skip Trace's checks (a sort of the whole shard).
        trace = RawChunk(topk)
        paths.append(folder / f"shard{s:03d}.arrow")
        write_arrow_trace(paths[-1], iter([trace]), chunk_tokens=CHUNK_TOKENS)
        print(f"\rwrote {s + 1}/{shards} shards", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return paths


# Child processes: each measures itself and prints one JSON line (peak RSS: ru_maxrss,
# which counts the memory-mapped pages of the Arrow shards it has touched too).
STREAMING = """
import json, resource, sys, time
import moefast as mf
files = sys.argv[1:]
t0, c0 = time.perf_counter(), time.process_time()
model = mf.plan(files, {gpus}, {slots}, chunk_tokens={chunk}, progress=False)
t1, c1 = time.perf_counter(), time.process_time()
print(json.dumps(dict(plan_s=t1 - t0, cpu_s=c1 - c0,
    rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    basis=model.settings["cost_basis"], note=model.settings["cost_note"],
    cost=float(model.layer_costs.sum()))))
"""

IN_MEMORY = """
import json, resource, sys, time
import moefast as mf
t0, c0 = time.perf_counter(), time.process_time()
trace = mf.load_trace(sys.argv[1])
model = mf.plan(trace, {gpus}, {slots}, evaluation=mf.Evaluation(split_by="time"), progress=False)
t1, c1 = time.perf_counter(), time.process_time()
print(json.dumps(dict(plan_s=t1 - t0, cpu_s=c1 - c0,
    rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    basis=model.settings["cost_basis"], note=model.settings["cost_note"],
    cost=float(model.layer_costs.sum()))))
"""

COUNT = """
import json, sys, time
from moefast.planning.executors import RayExecutor, tables_from_files
workers = int(sys.argv[1])
files = sys.argv[2:]
executor = RayExecutor("local", num_workers=workers) if workers else None
if executor is not None:  # start the workers before the clock
    from moefast.io.streaming import trace_shape
    list(executor.map(trace_shape, [files[0]] * workers))
t0, c0 = time.perf_counter(), time.process_time()
tables, _ = tables_from_files(files, chunk_tokens={chunk}, executor=executor, progress=False)
t1, c1 = time.perf_counter(), time.process_time()
print(json.dumps(dict(count_s=t1 - t0, cpu_s=c1 - c0)))
if executor is not None:
    executor.shutdown()
"""


TABLES_IN_MEMORY = """
import json, sys, time
import moefast as mf
t0, c0 = time.perf_counter(), time.process_time()
for path in sys.argv[1:]:
    tables = mf.load_trace(path).tables()
t1, c1 = time.perf_counter(), time.process_time()
print(json.dumps(dict(count_s=t1 - t0, cpu_s=c1 - c0)))
"""


def child(code: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    source = code.format(chunk=CHUNK_TOKENS, gpus=GPUS, slots=SLOTS)
    out = subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--ray", action="store_true", help="also time counting on Ray")
    parser.add_argument("--ray-shards", type=int, default=4)
    parser.add_argument(
        "--count-only", action="store_true", help="only the counting throughputs (with --ray)"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="moefast-bench-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        files = write_shards(folder, args.gb)
        size = sum(p.stat().st_size for p in files) / 1e9
        print(f"{len(files)} shards, {size:.2f} GB, written in {time.perf_counter() - t0:.0f} s")
        names = [str(p) for p in files]
        print(f"load average before the runs: {os.getloadavg()[0]:.1f} (2 cores shared)")
        if not args.count_only:
            plan_both(names)
        if args.ray:
            count_throughputs(names[: args.ray_shards])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"deleted {folder}")


def plan_both(names: list[str]) -> None:
    """The streamed plan of all the shards against the in-memory plan of one."""
    small = child(IN_MEMORY, names[:1])
    small["tokens"] = SHARD_TOKENS
    big = child(STREAMING, names)
    big["tokens"] = SHARD_TOKENS * len(names)
    for name, r in (("in memory, 1 shard", small), (f"streaming, {len(names)} shards", big)):
        print(
            f"{name}: {r['tokens']:,} tokens, plan {r['plan_s']:.1f} s wall, {r['cpu_s']:.1f} s"
            f" CPU ({r['tokens'] / r['plan_s'] / 1e3:.1f} k tokens/s wall,"
            f" {r['tokens'] / r['cpu_s'] / 1e3:.1f} k tokens per CPU second), peak RSS"
            f" {r['rss_gb']:.2f} GB; {r['basis']}: {r['note']}"
        )
    wall = (big["tokens"] / big["plan_s"]) / (small["tokens"] / small["plan_s"])
    cpu = (big["tokens"] / big["cpu_s"]) / (small["tokens"] / small["cpu_s"])
    print(
        f"streaming / in-memory tokens per second: {wall:.0%} wall, {cpu:.0%} CPU"
        f" (target >= 50%); streaming peak RSS {big['rss_gb']:.2f} GB (target <= 2 GB)"
    )


def count_throughputs(some: list[str]) -> None:
    """Counting alone: one core, then Ray with 1 and 2 workers (one core each)."""
    tokens = SHARD_TOKENS * len(some)
    one_core = child(COUNT, ["0", *some], {"RAYON_NUM_THREADS": "1"})
    whole = child(TABLES_IN_MEMORY, some, {"RAYON_NUM_THREADS": "1"})
    for name, r in (("streaming", one_core), ("in memory, shard by shard", whole)):
        print(
            f"counting ({name}), one core: {tokens / r['cpu_s'] / 1e6:.3f} M tokens per CPU"
            f" second, {tokens / r['count_s'] / 1e6:.3f} M tokens/s wall"
            f" ({LAYERS} layers a token, {len(some)} shards)"
        )
    for workers in (1, 2):
        r = child(COUNT, [str(workers), *some], {"RAYON_NUM_THREADS": "1"})
        print(
            f"counting on Ray, {workers} worker(s): {tokens / r['count_s'] / 1e6:.3f} M"
            f" tokens/s wall (load average {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
