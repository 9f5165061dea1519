"""Tables built chunk by chunk and merged equal the one-shot table exactly."""

from itertools import pairwise

import moefast as mf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moefast.streaming import SubsetTableBuilder, table_from_arrays, table_to_arrays
from reference import reference_table
from strategies import topk_arrays


def assert_same_table(got: mf.SubsetTable, want: mf.SubsetTable) -> None:
    assert (got.num_experts, got.k, len(got)) == (want.num_experts, want.k, len(want))
    np.testing.assert_array_equal(got.subsets, want.subsets)
    np.testing.assert_array_equal(got.weights, want.weights)
    assert got.coverage == want.coverage


def cuts(draw, tokens: int, parts: int) -> list[int]:
    inner = sorted(draw(st.lists(st.integers(0, tokens), min_size=parts - 1, max_size=parts - 1)))
    return [0, *inner, tokens]


@settings(max_examples=150, deadline=None)
@given(topk_arrays(max_tokens=200), st.data())
def test_ten_chunks_make_the_one_shot_table(case, data):
    topk, num_experts = case
    bounds = cuts(data.draw, len(topk), 10)  # chunks may be empty or hold everything
    weighted = data.draw(st.booleans())
    # Quarter weights add exactly in any order, so the tables must match bit for bit.
    weights = (
        np.array(data.draw(st.lists(st.integers(0, 8), min_size=len(topk), max_size=len(topk)))) / 4
        if weighted
        else None
    )
    whole = mf.SubsetTable.from_topk(topk, num_experts, weights)
    builder = SubsetTableBuilder(num_experts)
    for a, b in pairwise(bounds):
        builder.add(topk[a:b], None if weights is None else weights[a:b])
    assert_same_table(builder.finish(), whole)
    assert builder.tokens == len(topk)
    if weights is None:
        got = {
            tuple(int(e) for e in r): float(w)
            for r, w in zip(whole.subsets, whole.weights, strict=True)
        }
        assert got == reference_table(topk)


@settings(max_examples=60, deadline=None)
@given(topk_arrays(max_tokens=120), st.data())
def test_merge_of_merges_is_the_same_table(case, data):
    topk, num_experts = case
    bounds = cuts(data.draw, len(topk), 4)
    parts = [mf.SubsetTable.from_topk(topk[a:b], num_experts) for a, b in pairwise(bounds)]
    whole = mf.SubsetTable.from_topk(topk, num_experts)
    assert_same_table(mf.SubsetTable.merge(parts), whole)
    nested = mf.SubsetTable.merge(
        [mf.SubsetTable.merge(parts[:2]), mf.SubsetTable.merge(parts[2:])]
    )
    assert_same_table(nested, whole)
    assert_same_table(table_from_arrays(table_to_arrays(whole)), whole)


def test_wide_rows_merge_like_packed_rows():
    # k = 16 over 1000 experts takes the array-key path of the core.
    rng = np.random.default_rng(3)
    pool = np.array([rng.choice(1000, 16, replace=False) for _ in range(40)])
    topk = pool[rng.integers(0, 40, size=3000)]
    whole = mf.SubsetTable.from_topk(topk, 1000)
    builder = SubsetTableBuilder(1000)
    for chunk in np.array_split(topk, 10):
        builder.add(chunk)
    assert_same_table(builder.finish(), whole)


def test_merge_refuses_mixed_shapes_and_nothing():
    a = mf.SubsetTable.from_topk([[0, 1]], 4)
    with pytest.raises(ValueError, match=r"tables\[1\]"):
        mf.SubsetTable.merge([a, mf.SubsetTable.from_topk([[0, 1, 2]], 4)])
    with pytest.raises(ValueError, match="at least one"):
        mf.SubsetTable.merge([])
    with pytest.raises(ValueError, match="no chunk"):
        SubsetTableBuilder(4).finish()
    with pytest.raises(TypeError):
        mf.SubsetTable.merge([a, "table"])


def test_builder_reports_bad_chunks_like_from_topk():
    builder = SubsetTableBuilder(4)
    builder.add([[0, 1]])
    with pytest.raises(ValueError, match="out of range"):
        builder.add([[0, 4]])
