"""Trace: validation, tables, loads, the native .npz round trip and format guessing."""

from __future__ import annotations

import moefast
import numpy as np
import pytest
from moefast.io.readers import load_trace
from moefast.trace import Trace
from support.reference import reference_table


def small_trace(weights=None) -> Trace:
    rng = np.random.default_rng(3)
    topk = np.stack([rng.permutation(6)[:2] for _ in range(40 * 3)]).reshape(40, 3, 2)
    return Trace(topk, 6, [3, 4, 5], weights)


def test_table_counts_each_layer_like_a_dictionary():
    trace = small_trace()
    for position in range(trace.num_layers):
        table = trace.table(position)
        expected = reference_table(trace.topk[:, position, :])
        got = {tuple(row): w for row, w in zip(table.subsets.tolist(), table.weights, strict=True)}
        assert got == expected
    # The tables built in parallel are each layer's, in order.
    for position, table in enumerate(trace.tables()):
        alone = trace.table(position)
        np.testing.assert_array_equal(table.subsets, alone.subsets)
        np.testing.assert_array_equal(table.weights, alone.weights)
    assert len(trace.tables()) == 3
    # With each token's row: the same tables, and every row holds its token's subset.
    tables, rows = trace.tables_with_rows()
    for position, (table, at) in enumerate(zip(tables, rows, strict=True)):
        np.testing.assert_array_equal(table.subsets, trace.table(position).subsets)
        np.testing.assert_array_equal(table.subsets[at], np.sort(trace.topk[:, position], axis=1))


def test_weighted_table_and_load_use_token_weights():
    weights = np.linspace(0.5, 2.0, 40)
    trace = small_trace(weights)
    table = trace.table(1)
    assert table.total_weight == pytest.approx(weights.sum())
    load = trace.expert_load()
    for e in range(6):
        expected = weights[(trace.topk[:, 1, :] == e).any(axis=1)].sum()
        assert load[1, e] == pytest.approx(expected)
    np.testing.assert_allclose(load[1], table.expert_load())


def test_npz_round_trip(tmp_path):
    trace = small_trace(np.arange(40, dtype=float))
    path = tmp_path / "t.npz"
    trace.save(path)
    back = load_trace(path)
    np.testing.assert_array_equal(back.topk, trace.topk)
    np.testing.assert_array_equal(back.weights, trace.weights)
    assert back.layer_ids == [3, 4, 5] and back.num_experts == 6


def test_source_is_kept_by_selections_and_saved(tmp_path):
    trace = small_trace()
    trace.source = "synthetic"
    assert trace.select_layers([2, 0]).synthetic
    assert trace.select_tokens(slice(0, 10)).synthetic
    train, test = trace.split(0.25)
    assert train.source == test.source == "synthetic"
    assert "source='synthetic'" in repr(trace)
    trace.save(tmp_path / "t.npz")
    assert moefast.load_trace(tmp_path / "t.npz").source == "synthetic"
    assert not small_trace().synthetic
    with pytest.raises(TypeError, match="source must be a str or None, got int"):
        Trace(trace.topk, 6, source=1)  # type: ignore[arg-type]


def test_save_keeps_the_given_name(tmp_path):
    path = tmp_path / "trace.bin"
    small_trace().save(path)
    assert path.exists() and load_trace(path).num_tokens == 40


def test_select_layers():
    sub = small_trace().select_layers([2, 0])
    assert sub.layer_ids == [5, 3] and sub.topk.shape == (40, 2, 2)


@pytest.mark.parametrize(
    "topk, num_experts, match",
    [
        (np.zeros((4, 2)), 4, "3-dimensional|tokens, layers, k"),
        (np.array([[[0, 4]]]), 4, "out of range"),
        (np.array([[[1, 1]]]), 4, "appears twice"),
        (np.array([[[-1, 2]]]), 4, "out of range"),
        # The int32 cast wrapped 2^32 + 1 onto expert 1 and the trace was accepted.
        (np.array([[[0, 2**32 + 1]]]), 4, "expert id 4294967297, out of range"),
        (
            np.full((1, 1, 2), 2**64 - 1, dtype=np.uint64),
            4,
            "expert id 18446744073709551615, out of range",
        ),
        (np.zeros((3, 0, 2), dtype=int), 4, "0 layers"),
        (np.array([[[0, 1]]]), 70_000, "num_experts must be at most 65535"),
    ],
)
def test_bad_topk_is_refused(topk, num_experts, match):
    with pytest.raises(ValueError, match=match):
        Trace(topk, num_experts)


def test_float_ids_are_refused():
    with pytest.raises(TypeError, match="integer"):
        Trace(np.array([[[0.0, 1.0]]]), 4)


def test_bad_layer_ids_and_weights_are_refused():
    topk = np.array([[[0, 1], [1, 2]]])
    with pytest.raises(ValueError, match="layer_ids has 1"):
        Trace(topk, 4, [0])
    with pytest.raises(ValueError, match="repeat"):
        Trace(topk, 4, [1, 1])
    with pytest.raises(ValueError, match="weights"):
        Trace(topk, 4, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        Trace(topk, 4, weights=[-1.0])


def test_table_position_out_of_range():
    with pytest.raises(IndexError, match="out of range"):
        small_trace().table(3)


def test_load_trace_points_load_files_elsewhere(tmp_path):
    path = tmp_path / "counts.json"
    path.write_text('{"logical_count": [[1, 2]]}')
    with pytest.raises(ValueError, match="load_expert_load"):
        load_trace(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        load_trace("/nonexistent/trace.npz")


def test_bundled_trace_loads():
    from moefast.data import GPTOSS20B_DECODE

    trace = load_trace(GPTOSS20B_DECODE)
    assert (trace.num_experts, trace.k, trace.num_layers) == (32, 4, 24)
    assert isinstance(trace.table(0), moefast.SubsetTable)


def test_trace_field_types():
    topk = np.array([[[0, 1], [1, 2]]])
    with pytest.raises(TypeError, match="num_experts must be an int, got float"):
        Trace(topk, 4.5)
    with pytest.raises(TypeError, match="layer_ids must hold ints"):
        Trace(topk, 4, [1.7, 2.2])
    assert Trace(topk, np.int64(4), np.array([3, 5])).layer_ids == [3, 5]
    with pytest.raises(TypeError, match="weights must hold real numbers"):
        Trace(topk, 4, weights=np.ones(1, dtype=complex))
    with pytest.raises(ValueError, match="weights sum to inf"):
        Trace(np.array([[[0, 1]], [[1, 2]]]), 4, weights=[1e308, 1e308])
