"""Benchmarks of the batch cost model. Each asserts its result and prints a
ratio against a plain reference measured in the same run.

    pytest benches/bench_batch.py -s --benchmark-disable-gc    (after maturin develop --release)
"""

from __future__ import annotations

import time

import moefast as mf
import numpy as np
import pytest
from moefast.placement import ModelPlacement
from support.batch_reference import reference_layer_time
from support.workloads import skewed_topk

#: DeepSeek-V3 expert on an H100, fitted from shared/calibration (CUDA graphs).
DEEPSEEK_V3 = mf.CostModel(47.26, 0.110, 1.4)
#: The issue's placement target: Mixtral-like expert, additive form.
TARGET_MODEL = mf.CostModel(130.0, 0.5)


def _deepseek_layer(num_tokens: int, seed: int) -> tuple[np.ndarray, mf.Placement]:
    topk = skewed_topk(num_tokens, 256, 8, seed=seed, num_topics=256)
    placement = mf.optimize(mf.SubsetTable.from_topk(topk, 256), 32, 9, method="eplb")
    return topk, placement


def test_batch_time_speed(benchmark):
    """4,096 tokens x top-8 over 256 experts and 32 GPUs (EPLB placement, 9 slots)."""
    topk, placement = _deepseek_layer(4096, seed=0)
    lists = placement.to_lists()
    for cm in (DEEPSEEK_V3, TARGET_MODEL):
        time_us, bound = mf.batch_time(topk, placement, cm, return_bound=True)
        greedy = reference_layer_time(topk, lists, cm.alpha, cm.beta, cm.p)
        assert bound <= time_us <= greedy * (1 + 1e-9)
        print(
            f"\n{cm}: step {time_us:.1f} us, lower bound {bound:.1f}"
            f" (gap {time_us / bound - 1:.2%}),"
            f" largest-first greedy {greedy:.1f}"
        )
    got = benchmark(mf.batch_time, topk, placement, DEEPSEEK_V3)
    assert got == pytest.approx(mf.batch_time(topk, placement, DEEPSEEK_V3))
    start = time.perf_counter()
    reference_layer_time(topk, lists, DEEPSEEK_V3.alpha, DEEPSEEK_V3.beta, DEEPSEEK_V3.p)
    reference_s = time.perf_counter() - start
    mean_s = benchmark.stats.stats.mean
    print(
        f"batch_time {mean_s * 1e6:.0f} us per call;"
        f" Python largest-first greedy {reference_s * 1e6:.0f} us"
        f" ({reference_s / mean_s:.1f}x)"
    )
    assert mean_s < 1e-3


def _numpy_simulate(
    topk: np.ndarray, model: ModelPlacement, batch: int, cm: mf.CostModel, steps: int, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lists = [p.to_lists() for p in model]
    out = np.empty(steps)
    for s in range(steps):
        tokens = rng.integers(0, topk.shape[0], size=batch)
        out[s] = sum(
            reference_layer_time(topk[tokens, layer], lists[layer], cm.alpha, cm.beta, cm.p)
            for layer in range(len(lists))
        )
    return out


def test_simulate_speed(benchmark):
    """1,000 steps of B = 256 on a DeepSeek-V3-size model: 58 layers, 256 experts, top-8,
    32 GPUs."""
    layers = 58
    topk = np.stack(
        [skewed_topk(4096, 256, 8, seed=layer, num_topics=256) for layer in range(layers)], axis=1
    )
    model = ModelPlacement(
        [
            mf.optimize(mf.SubsetTable.from_topk(topk[:, layer], 256), 32, 9, method="eplb")
            for layer in range(layers)
        ],
        9,
    )
    result = benchmark.pedantic(
        mf.simulate, args=(topk, model, 256, DEEPSEEK_V3), kwargs=dict(steps=1000), rounds=1
    )
    rust_s = benchmark.stats.stats.mean
    ref_steps = 10
    start = time.perf_counter()
    ref = _numpy_simulate(topk, model, 256, DEEPSEEK_V3, ref_steps, seed=0)
    ref_s = (time.perf_counter() - start) / ref_steps * 1000
    (r,) = result
    print(
        f"\nsimulate: 1,000 steps in {rust_s:.2f} s (mean step {r['mean_step_time']:.0f} us);"
        f" Python greedy reference {ref_s:.1f} s per 1,000 steps ({ref_s / rust_s:.1f}x slower),"
        f" its mean step {ref.mean():.0f} us (not optimal: {ref.mean() / r['mean_step_time']:.3f}x)"
    )
    assert rust_s <= 10.0
    assert r["mean_step_time"] <= ref.mean() * 1.02


@pytest.fixture(scope="module")
def target_trace():
    topk = skewed_topk(200_000, 64, 6, seed=0)
    table = mf.SubsetTable.from_topk(topk, num_experts=64)
    return topk, table, mf.optimize(table, 8, 9, method="eplb"), mf.optimize(table, 8, 9)


def _mean_step(topk, placement, batch):
    # Held-out batches: the search drew its own sample with another seed.
    steps = 20_000 if batch == 1 else max(200, 4096 // batch)
    return mf.simulate(topk, placement, batch, TARGET_MODEL, seed=12345, steps=steps)[0][
        "mean_step_time"
    ]


def _compare(target, batch):
    """Mean step times of EPLB, the decode greedy and the batch-aware placement."""
    topk, table, eplb, greedy = target
    start = time.perf_counter()
    placed = mf.optimize(table, 8, 9, objective=mf.Objective("batch", batch, TARGET_MODEL))
    seconds = time.perf_counter() - start
    assert placed.slots_used.tolist() == [9] * 8
    return (
        _mean_step(topk, eplb, batch),
        _mean_step(topk, greedy, batch),
        _mean_step(topk, placed, batch),
        seconds,
    )


def test_batch_placement_targets(target_trace):
    """200,000 skewed tokens, 64 experts, top-6, 8 GPUs x 9 slots, alpha 130, beta 0.5."""
    base, _, ours, seconds = _compare(target_trace, 1)
    print(
        f"\nB=1: EPLB {base:.1f} us, batch-aware {ours:.1f} us: {1 - ours / base:.1%} lower"
        f" ({seconds:.1f} s search)"
    )
    assert ours <= 0.85 * base
    base, _, ours, seconds = _compare(target_trace, 4096)
    print(
        f"B=4096: EPLB {base:.1f} us, batch-aware {ours:.1f} us: {ours / base - 1:+.1%}"
        f" ({seconds:.1f} s search)"
    )
    assert ours <= 1.02 * base


def test_gain_over_eplb_curve(target_trace):
    rows = [
        "| B | EPLB step (us) | greedy step (us) | batch-aware step (us) | greedy gain"
        " | batch-aware gain | search (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    gains = []
    for batch in (1, 4, 16, 64, 256, 1024, 4096):
        base, greedy, ours, seconds = _compare(target_trace, batch)
        gains.append(1 - ours / base)
        rows.append(
            f"| {batch} | {base:.1f} | {greedy:.1f} | {ours:.1f} | {1 - greedy / base:.1%}"
            f" | {1 - ours / base:.1%}"
            f" | {seconds:.1f} |"
        )
    print("\n" + "\n".join(rows))
    assert min(gains) > -0.02
