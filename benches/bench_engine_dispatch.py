"""moefast's dispatch (`moefast.dispatch.route`) as an engine would run it: what it realizes
on held-out batches, and its time per call.

Realized: the four layers of bench_dispatch.py (placed on the first 80% of the tokens in
time order), 300 batches of each size drawn from the last 20% (seed 1). For each placement
and batch size, the mean step time of the ids `route` returns (a plain per-GPU sum of
f(tokens per slot)) beside `batch_time` on the same batches (the best replica choice), and
SGLang's dynamic rule (a uniform replica per pair) on the same batches. B = 1: expert rounds.

Time per call: the V3-size layer's greedy placement (32 GPUs x 9 slots), B from 1 to 1,024
held-out tokens, median of 31 calls after 3 warm-ups, on numpy and on torch (CPU tensors:
no GPU here), against the reference in the same run: SGLang's dynamic dispatch transcribed
in torch (`randint(0, 65536) % count`, then a gather), the cheapest rule an engine runs.

    pytest benches/bench_engine_dispatch.py -s
"""

from __future__ import annotations

import time

import moefast as mf
import numpy as np
import pytest
from bench_dispatch import SMALL, cases
from moefast.dispatch import ReplicaTable, route

BATCHES = (1, 16, 64, 256)
STEPS = 300
CALL_SIZES = (1, 4, 16, 64, 256, 1024)
CALLS = 31


def step_time(physical: np.ndarray, table: ReplicaTable, cm: mf.CostModel) -> float:
    slots = table.num_gpus * table.slots_per_gpu
    counts = np.bincount(np.asarray(physical).ravel(), minlength=slots)
    gpu = np.arange(slots) // table.slots_per_gpu
    return float(np.bincount(gpu, weights=cm.expert_time(counts), minlength=table.num_gpus).max())


def dynamic(topk: np.ndarray, table: ReplicaTable, rng: np.random.Generator) -> np.ndarray:
    pick = rng.integers(0, 65536, size=topk.shape) % table.count[topk]
    return table.physical[topk, pick]


def realized_rows() -> list[tuple[str, str, int, float, float, float]]:
    rows = []
    for name, topk, experts, gpus, slots, cm in cases():
        cut = int(0.8 * len(topk))
        train = mf.SubsetTable.from_topk(topk[:cut], num_experts=experts)
        test = np.ascontiguousarray(topk[cut:]).astype(np.int64)
        for method in ("greedy", "eplb"):
            p = mf.optimize(train, gpus, slots, method=method)
            table = ReplicaTable.from_placement(p, slots)
            for b in BATCHES:
                rng = np.random.default_rng(1)
                mine, best, drawn = [], [], []
                for _ in range(STEPS):
                    batch = test[rng.choice(len(test), size=b, replace=False)]
                    unit = mf.CostModel(1.0, 0.0) if b == 1 else cm
                    mine.append(step_time(route(batch, table, cost_model=cm), table, unit))
                    best.append(mf.batch_time(batch, p, unit))
                    drawn.append(step_time(dynamic(batch, table, rng), table, unit))
                rows.append((name, method, b, np.mean(mine), np.mean(best), np.mean(drawn)))
    return rows


def test_dispatch_realizes_the_best_choice():
    if not SMALL.is_dir():
        pytest.skip("shared/data/real_small_traces is not beside the repository")
    print(
        "\n| layer | placement | B | moefast dispatch | best choice (batch_time) | SGLang dynamic |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, method, b, mine, best, drawn in realized_rows():
        unit = "rounds" if b == 1 else "us"
        print(
            f"| {name} | {method} | {b} | {mine:.3f} {unit} | {best:.3f} | {drawn:.3f} |",
            flush=True,
        )
        # The dispatch runs each batch in the time batch_time reports for it.
        assert mine == pytest.approx(best, rel=1e-9)


def median_call(fn, *args, **kwargs) -> float:
    for _ in range(3):
        fn(*args, **kwargs)
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def test_time_per_call():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    name, topk, experts, gpus, slots, cm = cases()[0]
    cut = int(0.8 * len(topk))
    p = mf.optimize(mf.SubsetTable.from_topk(topk[:cut], num_experts=experts), gpus, slots)
    table = ReplicaTable.from_placement(p, slots)
    physical = torch.as_tensor(table.physical)
    count = torch.as_tensor(table.count)

    def sglang_dynamic(ids):
        flat = ids.flatten()
        pick = torch.randint(0, 65536, flat.shape, dtype=torch.int32) % count[flat]
        return physical[flat, pick].view(ids.shape)

    print(f"\n{name}, greedy on {gpus} x {slots}, one thread; median of {CALLS} calls (ms)")
    print("| B | numpy | torch (CPU) | SGLang dynamic (torch) | torch / SGLang dynamic |")
    print("| --- | --- | --- | --- | --- |")
    for b in CALL_SIZES:
        batch = np.ascontiguousarray(topk[cut : cut + b]).astype(np.int64)
        ids = torch.as_tensor(batch, dtype=torch.int32)
        model = cm if b > 1 else None
        t_np = median_call(route, batch, table, cost_model=model, check=False)
        t_torch = median_call(route, ids, table, cost_model=model, check=False)
        t_ref = median_call(sglang_dynamic, ids)
        print(
            f"| {b} | {1e3 * t_np:.3f} | {1e3 * t_torch:.3f} | {1e3 * t_ref:.3f} |"
            f" {t_torch / t_ref:.0f}x |",
            flush=True,
        )
        assert t_torch > 0 and t_ref > 0
