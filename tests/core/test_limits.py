"""The limits, method names, memory check and version the core exports (src/limits.rs,
src/bindings): the values Python imports are the ones the core enforces."""

from __future__ import annotations

import re
from pathlib import Path

import moefast as mf
import numpy as np
import pytest
from moefast import _core


def test_exported_limits_are_the_enforced_ones():
    assert (_core.MAX_EXPERTS, _core.MAX_K, _core.MAX_GPUS) == (65_535, 16, 1024)
    one_each = [[0]]
    mf.Placement.from_lists(one_each, _core.MAX_GPUS)
    with pytest.raises(ValueError, match=f"num_gpus must be in \\[1, {_core.MAX_GPUS}\\]"):
        mf.Placement.from_lists(one_each, _core.MAX_GPUS + 1)
    k = _core.MAX_K
    mf.SubsetTable.from_topk(np.arange(k)[None, :], num_experts=k)
    with pytest.raises(ValueError, match=f"must be in \\[1, {k}\\]"):
        mf.SubsetTable.from_topk(np.arange(k + 1)[None, :], num_experts=k + 1)
    with pytest.raises(ValueError, match=f"num_experts must be in \\[1, {_core.MAX_EXPERTS}\\]"):
        mf.SubsetTable.from_topk(np.zeros((1, 1), dtype=int), num_experts=_core.MAX_EXPERTS + 1)


def test_methods_are_the_core_ones_plus_the_milp():
    assert _core.METHODS == ("greedy", "contiguous", "round_robin", "eplb")
    assert set(mf.METHODS) == {*_core.METHODS, "milp"}
    table = mf.SubsetTable.from_topk(np.array([[0, 1], [2, 3], [0, 2]]), num_experts=4)
    for method in _core.METHODS:
        assert _core.optimize_placement(table, 2, 3, method).slots_used.tolist() == [3, 3]


@pytest.mark.parametrize("num_experts", [1, 5, 8])
def test_check_memory_accepts_exactly_what_fits(num_experts):
    for gpus in range(1, 5):
        for slots in range(1, 10):
            fits = gpus * slots >= num_experts and slots <= num_experts
            if fits:
                _core.check_memory(num_experts, gpus, slots)
            else:
                with pytest.raises(ValueError, match=r"cannot hold|more than the"):
                    _core.check_memory(num_experts, gpus, slots)


def test_every_layer_reports_memory_with_the_core_message():
    table = mf.SubsetTable.from_topk(np.arange(8).reshape(4, 2), num_experts=8)
    expected = "2 GPUs x 3 slots = 6 slots cannot hold 8 experts"
    for call in (
        lambda: _core.check_memory(8, 2, 3),
        lambda: _core.optimize_placement(table, 2, 3),
        lambda: mf.optimize(table, 2, 3, method="milp"),
        lambda: mf.plan([table], 2, 3),
    ):
        with pytest.raises(ValueError, match=expected):
            call()


def test_version_is_cargos():
    cargo = (Path(__file__).parents[2] / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.MULTILINE).group(1)
    assert mf.__version__ == _core.__version__ == version


def test_fill_free_slots_keeps_replicas_and_fills_with_distinct_experts():
    start = mf.Placement.from_lists([[0], [1], [2], [0]], num_gpus=3)
    load = np.array([1.0, 8.0, 2.0, 4.0])
    full = _core.fill_free_slots(start, 2, load)
    assert full.slots_used.tolist() == [2, 2, 2]
    assert (full.replicas >= start.replicas).all()
    # GPU 1 takes the heaviest expert per replica it lacks (3), then GPU 2 (1).
    assert full.replicas[3, 1] and full.replicas[1, 2]
    with pytest.raises(ValueError, match="more than slots_per_gpu"):
        _core.fill_free_slots(mf.Placement.from_lists([[0], [0], [1], [2, 3]], 4), 1, load)
    with pytest.raises(ValueError, match="expert_load has 3 entries"):
        _core.fill_free_slots(start, 2, load[:3])
    with pytest.raises(ValueError, match=r"expert_load\[1\] = NaN"):
        _core.fill_free_slots(start, 2, np.array([1.0, np.nan, 0.0, 0.0]))
