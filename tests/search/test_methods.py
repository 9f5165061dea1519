"""moefast.search.methods: the core's optimizers (`moefast._core.optimize_placement`), checked
against a pure-Python cost and a brute force over all placements of tiny instances, and
`optimize`, which checks its arguments and dispatches on method and objective."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import moefast as mf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moefast import _core
from support.reference import expected_cost_ref
from support.workloads import skewed_table

METHODS = _core.METHODS


# --- pure-Python reference -------------------------------------------------------------


def brute_force_optimum(subsets, weights, num_experts: int, num_gpus: int, slots: int) -> float:
    """Best expected cost over every placement with exactly `slots` experts per GPU."""
    contents = list(itertools.combinations(range(num_experts), slots))
    best = float("inf")
    for choice in itertools.product(range(len(contents)), repeat=num_gpus):
        if list(choice) != sorted(choice):
            continue  # GPUs are interchangeable
        replicas = np.zeros((num_experts, num_gpus), dtype=bool)
        for g, c in enumerate(choice):
            replicas[list(contents[c]), g] = True
        if not replicas.any(axis=1).all():
            continue
        best = min(best, expected_cost_ref(subsets, weights, replicas))
    return best


# --- helpers -----------------------------------------------------------------------------


def check_invariants(p, num_experts: int, num_gpus: int, slots: int) -> None:
    r = p.replicas
    assert r.shape == (num_experts, num_gpus)
    assert r.any(axis=1).all(), "an expert has no replica"
    assert (r.sum(axis=0) == slots).all(), f"slots used {r.sum(axis=0)}, expected {slots} each"
    assert (p.slots_used == slots).all()


def cost(table, p) -> float:
    return _core.expected_cost(table, p)


@st.composite
def instances(draw, max_gpus: int = 8):
    num_experts = draw(st.integers(2, 24))
    k = draw(st.integers(1, min(num_experts, 6)))
    num_gpus = draw(st.integers(1, max_gpus))
    low = -(-num_experts // num_gpus)
    slots = draw(st.integers(low, min(num_experts, low + 3)))
    seed = draw(st.integers(0, 2**32))
    tokens = draw(st.integers(1, 200))
    table = skewed_table(seed, num_experts, k, tokens)
    return table, num_experts, num_gpus, slots


# --- tests --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_every_method_fills_every_slot(instance):
    table, e, g, s = instance
    for method in METHODS:
        check_invariants(_core.optimize_placement(table, g, s, method), e, g, s)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("num_experts", "num_gpus", "slots"), [(100, 80, 2), (160, 130, 3), (1100, 1024, 2)]
)
def test_many_gpus(method, num_experts, num_gpus, slots):
    table = skewed_table(num_gpus, num_experts, 6, 400)
    p = _core.optimize_placement(table, num_gpus, slots, method)
    check_invariants(p, num_experts, num_gpus, slots)
    assert cost(table, p) >= _core.lower_bound(table, num_gpus)


def test_greedy_beats_baselines_with_many_gpus():
    table = skewed_table(5, 100, 6, 2000)
    greedy = cost(table, _core.optimize_placement(table, 80, 2))
    for method in METHODS[1:]:
        assert greedy <= cost(table, _core.optimize_placement(table, 80, 2, method))


@pytest.mark.parametrize(
    ("num_gpus", "slots", "method", "message"),
    [
        (2, 3, "greedy", "cannot hold 8 experts"),
        (2, 9, "greedy", "more than the 8 experts"),
        (0, 4, "greedy", "num_gpus"),
        (-1, 4, "eplb", "num_gpus"),
        (2, 0, "greedy", "slots_per_gpu"),
        (2, -3, "contiguous", "slots_per_gpu"),
        (4096, 4, "greedy", "num_gpus"),
        (2, 4, "milp2", "unknown method"),
    ],
)
def test_bad_inputs_raise_value_error(num_gpus, slots, method, message):
    table = skewed_table(0, 8, 2, 50)
    with pytest.raises(ValueError, match=message):
        _core.optimize_placement(table, num_gpus, slots, method)


def test_negative_seed_raises_value_error():
    table = skewed_table(0, 8, 2, 50)
    with pytest.raises(ValueError, match="seed"):
        _core.optimize_placement(table, 2, 4, seed=-1)


def test_same_seed_same_placement():
    table = skewed_table(1, 32, 4, 3000)
    a = _core.optimize_placement(table, 4, 9, seed=7)
    b = _core.optimize_placement(table, 4, 9, seed=7)
    assert a == b
    assert (a.replicas == b.replicas).all()


_THREADS_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from moefast import _core
from support.workloads import skewed_table
out = []
for e, g, s in [(64, 8, 9), (40, 70, 1)]:
    table = skewed_table(e, e, 6, 5000)
    out.append(_core.optimize_placement(table, g, s, seed=3).to_lists())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_result_does_not_depend_on_thread_count():
    script = _THREADS_SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)))
    results = []
    for threads in ("1", "2", "3"):
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        results.append(json.loads(done.stdout))
    assert results[0] == results[1] == results[2]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_experts=st.integers(4, 6),
    num_gpus=st.integers(2, 3),
    extra_slots=st.integers(0, 1),
    k=st.integers(2, 3),
    seed=st.integers(0, 2**32),
)
def test_greedy_is_near_brute_force_optimum(num_experts, num_gpus, extra_slots, k, seed):
    slots = min(num_experts, -(-num_experts // num_gpus) + extra_slots)
    table = skewed_table(seed, num_experts, k, 40)
    subsets, weights = table.subsets.tolist(), table.weights.tolist()
    p = _core.optimize_placement(table, num_gpus, slots)
    greedy = expected_cost_ref(subsets, weights, p.replicas)
    assert greedy == pytest.approx(cost(table, p))
    optimum = brute_force_optimum(subsets, weights, num_experts, num_gpus, slots)
    assert optimum <= greedy + 1e-9
    # Measured: equal to the optimum on 40 of 40 such instances.
    assert greedy <= optimum * 1.05 + 1e-9, f"greedy {greedy} vs optimum {optimum}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_greedy_never_worse_than_baselines(instance):
    table, _, g, s = instance
    greedy = cost(table, _core.optimize_placement(table, g, s))
    for method in METHODS[1:]:
        assert greedy <= cost(table, _core.optimize_placement(table, g, s, method)) + 1e-12, method


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(max_gpus=6))
def test_more_slots_never_cost_more(instance):
    table, e, g, s = instance
    previous = float("inf")
    for slots in range(s, min(e, s + 3) + 1):
        c = cost(table, _core.optimize_placement(table, g, slots))
        assert c <= previous + 1e-12, f"{slots} slots cost {c} > {previous}"
        previous = c


def test_greedy_separates_co_activated_experts():
    # Experts 2i and 2i+1 always come together: 2 GPUs can serve every pair in one round.
    subsets = np.array([[2 * i, 2 * i + 1] for i in range(4)])
    table = _core.SubsetTable.from_subsets(subsets, np.array([8.0, 4.0, 2.0, 1.0]), num_experts=8)
    p = _core.optimize_placement(table, 2, 4)
    assert cost(table, p) == 1.0
    assert cost(table, _core.optimize_placement(table, 2, 4, "contiguous")) == 2.0


# --- optimize: arguments and dispatch ---------------------------------------------------


@pytest.mark.parametrize(
    "num_gpus, slots, message",
    [
        (2, 3, "cannot hold 8 experts"),
        (2, 9, "more than the 8 experts"),
        (0, 4, "num_gpus must be at least 1"),
        (2, 0, "slots_per_gpu must be at least 1"),
    ],
)
def test_infeasible_memory_is_refused(num_gpus, slots, message):
    table = skewed_table(4, 8, 2)
    with pytest.raises(ValueError, match=message):
        mf.optimize(table, num_gpus, slots, method="milp")


def test_bad_optimize_arguments():
    table = skewed_table(5, 8, 2)
    with pytest.raises(ValueError, match="unknown method 'best'"):
        mf.optimize(table, 2, 4, method="best")
    with pytest.raises(TypeError, match="table must be a SubsetTable"):
        mf.optimize(np.zeros((3, 2)), 2, 4)
    with pytest.raises(TypeError, match="num_gpus must be an int"):
        mf.optimize(table, 2.0, 4)


@pytest.mark.parametrize("method", ["milp", "greedy", "eplb"])
def test_out_of_range_integers_and_limits(method):
    table = skewed_table(5, 8, 2)
    # The MILP path reported 10^20 assignment variables, the others an OverflowError.
    with pytest.raises(ValueError, match="num_gpus must be at most 1024, got 18446744073709551616"):
        mf.optimize(table, 2**64, 4, method=method)
    with pytest.raises(ValueError, match="seed must be at least 0, got -1"):
        mf.optimize(table, 2, 4, method=method, seed=-1)
    with pytest.raises(ValueError, match="seed must be at most"):
        mf.optimize(table, 2, 4, method=method, seed=2**64)
    # numpy ints (say from an array of sizes) are ints.
    assert (
        mf.optimize(table, np.int64(2), np.int32(4), method=method, seed=np.uint8(1)).num_gpus == 2
    )


def test_options_are_keyword_only():
    table = skewed_table(5, 8, 2)
    with pytest.raises(TypeError, match="positional"):
        mf.optimize(table, 2, 4, "eplb")  # type: ignore[misc]  # the check under test
    with pytest.raises(TypeError, match="unexpected keyword"):
        mf.optimize(table, 2, 4, batch=64)  # type: ignore[call-arg]  # the check under test


def test_decode_objective_matches_the_core():
    table = skewed_table(7, 16, 4, tokens=500)
    for method in ("greedy", "contiguous", "round_robin", "eplb"):
        assert mf.optimize(table, 4, 5, method=method, seed=3) == _core.optimize_placement(
            table, 4, 5, method, 3
        )


def test_objective_and_batch_options_are_checked():
    table = skewed_table(5, 8, 2)
    cm = mf.CostModel(130.0, 0.5)
    with pytest.raises(ValueError, match="unknown objective 'latency'"):
        mf.optimize(table, 2, 4, objective="latency")  # type: ignore[arg-type]  # under test
    with pytest.raises(ValueError, match="batch_size, cost_model need objective='batch'"):
        mf.optimize(table, 2, 4, batch_size=8, cost_model=cm)
    with pytest.raises(ValueError, match="objective='batch' needs batch_size and cost_model"):
        mf.optimize(table, 2, 4, objective="batch", batch_size=8)
    with pytest.raises(TypeError, match=r"cost_model must be a moefast\.CostModel"):
        mf.optimize(table, 2, 4, objective="batch", batch_size=8, cost_model=(130.0, 0.5))
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        mf.optimize(table, 2, 4, objective="batch", batch_size=0, cost_model=cm)


@pytest.mark.slow
def test_batch_objective_starts_from_the_faster_of_greedy_and_eplb():
    from moefast.search.batch import fastest_placement, optimize_batch

    table = skewed_table(8, 16, 4, tokens=2000)
    cm = mf.CostModel(130.0, 0.5)
    got = mf.optimize(
        table, 4, 5, objective="batch", batch_size=16, cost_model=cm, max_evaluations=300
    )
    starts = [mf.optimize(table, 4, 5, method=m) for m in ("greedy", "eplb")]
    start = fastest_placement(table, starts, cm, 16)
    assert got == optimize_batch(table, start, 5, cm, 16, max_evaluations=300)
    # A named method is the only start.
    eplb = mf.optimize(
        table,
        4,
        5,
        method="eplb",
        objective="batch",
        batch_size=16,
        cost_model=cm,
        max_evaluations=300,
    )
    assert eplb == optimize_batch(table, starts[1], 5, cm, 16, max_evaluations=300)
