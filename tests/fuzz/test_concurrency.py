"""Inputs changed by other threads during calls, and calls from many threads at once.

A call copies its arrays once, with the GIL held, before it checks them: whatever another
thread writes meanwhile, the call either works on one consistent snapshot or raises a
ValueError; it never panics and never returns a result no snapshot gives."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import moefast as mf
import numpy as np
import pytest
from moefast.search.batch import optimize_batch
from support.fuzz import COUNTS, SEED, THREAD_ROUNDS

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

BAD_VALUES = [3_567_587_328, -1, 2**40, 64, 65_535]


def _writer(array: np.ndarray, values: list, stop: threading.Event, seed: int) -> None:
    """Writes random values at random places of `array` until stopped."""
    rng = random.Random(seed)
    flat = array.reshape(-1)
    while not stop.is_set():
        flat[rng.randrange(flat.size)] = rng.choice(values)


def _with_writer(array: np.ndarray, values: list, calls, seed: int) -> list:
    stop = threading.Event()
    thread = threading.Thread(target=_writer, args=(array, values, stop, seed))
    thread.start()
    outcomes = []
    try:
        for function, *args in calls:
            COUNTS["concurrent calls"] += 1
            try:
                outcomes.append(function(*args))
            except ValueError as err:
                outcomes.append(err)
    finally:
        stop.set()
        thread.join()
    return outcomes


def test_ids_written_by_another_thread():
    """Tables, batch times, simulation and batch search while another thread writes ids
    in and out of range into the same array."""
    rng = np.random.default_rng(SEED)
    num_experts = 64
    for round_ in range(THREAD_ROUNDS):
        topk = np.argsort(rng.random((20_000, num_experts)), axis=1)[:, :6].astype(np.int64)
        good = [int(x) for x in topk[:50, 0]]
        placement = mf.Placement.from_lists([[e % 8, (e + 1) % 8] for e in range(num_experts)], 8)
        cm = mf.CostModel(130.0, 0.5)
        model = mf.ModelPlacement([placement], 16)
        calls = [
            (mf.SubsetTable.from_topk, topk, num_experts),
            (mf.batch_time, topk, placement, cm),
            (partial(mf.simulate, steps=20), topk[:, None, :], model, [4], cm),
            (partial(optimize_batch, max_evaluations=50), topk, placement, 16, cm, 8),
        ]
        for outcome in _with_writer(topk, BAD_VALUES + good, calls, SEED + round_):
            if isinstance(outcome, ValueError):
                assert (
                    "out of range" in str(outcome)
                    or "twice" in str(outcome)
                    or ("repeats" in str(outcome))
                ), outcome
            elif isinstance(outcome, mf.SubsetTable):
                assert outcome.total_weight == len(topk)  # every row counted once
                assert (outcome.subsets < num_experts).all() and (outcome.subsets >= 0).all()
            elif isinstance(outcome, float):
                assert np.isfinite(outcome) and outcome >= 0
            elif isinstance(outcome, list):
                assert np.isfinite(outcome[0]["mean_step_time"])
            else:
                assert outcome.num_experts == num_experts


def test_weights_written_by_another_thread():
    rng = np.random.default_rng(SEED + 1)
    for round_ in range(THREAD_ROUNDS):
        topk = np.argsort(rng.random((20_000, 16)), axis=1)[:, :3].astype(np.int64)
        weights = np.ones(len(topk))
        calls = [(mf.SubsetTable.from_topk, topk, 16, weights)] * 4
        calls += [(mf.SubsetTable.from_subsets, topk, weights, 16)] * 4
        values = [np.nan, -1.0, np.inf, 1e308, 1.0, 2.0]
        for outcome in _with_writer(weights, values, calls, SEED + round_):
            if isinstance(outcome, ValueError):
                assert "weights" in str(outcome)
            else:
                assert np.isfinite(outcome.weights).all() and (outcome.weights >= 0).all()
                assert np.isfinite(outcome.total_weight)


def test_replicas_written_by_another_thread():
    for round_ in range(THREAD_ROUNDS):
        replicas = np.ones((64, 8), dtype=bool)
        calls = [(mf.Placement, replicas)] * 20
        for outcome in _with_writer(replicas, [False, True], calls, SEED + round_):
            if isinstance(outcome, ValueError):
                assert "no replica" in str(outcome)
            else:
                assert outcome.replicas.any(axis=1).all()


def test_many_threads_get_the_single_thread_results():
    """The same calls from 8 threads at once give the results of one thread."""
    trace = mf.synthetic_trace(3_000, 16, 4, 2, seed=SEED)
    tables = trace.tables()
    cm = mf.CostModel(50.0, 1.0)

    def work(i: int):
        table = tables[i % 2]
        placement = mf.optimize(table, 4, 5, seed=i % 3)
        return (
            placement,
            mf.expected_cost(table, placement),
            mf.batch_time(trace.topk[:64, i % 2], placement, cm),
            mf.simulate(table, placement, [4], cm, seed=i, steps=20)[0]["mean_step_time"],
        )

    expected = [work(i) for i in range(16)]
    for _ in range(max(1, THREAD_ROUNDS // 3)):
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(work, range(16)))
        COUNTS["concurrent calls"] += 16 * 4
        assert got == expected
