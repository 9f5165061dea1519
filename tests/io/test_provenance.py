"""moefast.io.provenance: the ``source`` mark a saved trace carries, read back beside it."""

from __future__ import annotations

import numpy as np
import pytest
from moefast.io.provenance import load_trace, saved_source
from moefast.io.synthetic import synthetic_trace
from moefast.trace import SYNTHETIC, Trace


def test_a_synthetic_trace_keeps_its_mark_through_a_file(tmp_path):
    trace = synthetic_trace(50, 8, 2, 3, seed=1)
    assert trace.source == SYNTHETIC and trace.synthetic
    path = tmp_path / "t.npz"
    trace.save(path)
    assert saved_source(path) == SYNTHETIC
    back = load_trace(path)
    assert back.synthetic
    np.testing.assert_array_equal(back.topk, trace.topk)


def test_traces_without_a_mark_load_without_one(tmp_path):
    path = tmp_path / "t.npz"
    Trace(np.array([[[0, 1]], [[1, 2]]]), 4).save(path)
    assert saved_source(path) is None and load_trace(path).source is None
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"layer": 0, "token": 0, "experts": [0, 1]}\n')
    assert saved_source(jsonl) is None
    assert saved_source(tmp_path / "missing.npz") is None


@pytest.mark.parametrize(
    "value", [np.arange(3), np.array(["a", "b"]), np.str_("x" * 300)], ids=["ints", "two", "long"]
)
def test_a_malformed_mark_is_refused_naming_the_file(tmp_path, value):
    path = tmp_path / "bad.npz"
    np.savez(path, topk=np.array([[[0, 1]]]), num_experts=np.int64(4), source=value)
    with pytest.raises(ValueError, match=r"bad\.npz: malformed trace: 'source'"):
        load_trace(path)
