import moefast as mf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.reference import reference_table
from support.strategies import topk_arrays


def as_dict(table: mf.SubsetTable) -> dict:
    return {
        tuple(int(e) for e in row): float(w)
        for row, w in zip(table.subsets, table.weights, strict=True)
    }


@settings(max_examples=200, deadline=None)
@given(topk_arrays())
def test_from_topk_counts_like_a_dictionary(case):
    topk, num_experts = case
    table = mf.SubsetTable.from_topk(topk, num_experts=num_experts)
    assert as_dict(table) == reference_table(topk)
    assert len(table) == len(reference_table(topk))
    assert table.total_weight == len(topk)
    assert table.k == topk.shape[1] and table.num_experts == num_experts


@settings(max_examples=100, deadline=None)
@given(topk_arrays(), st.integers(0, 2**32 - 1))
def test_weighted_rows_sum_their_weights(case, seed):
    topk, num_experts = case
    weights = np.random.default_rng(seed).random(len(topk))
    table = mf.SubsetTable.from_topk(topk, num_experts=num_experts, weights=weights)
    expected = reference_table(topk, weights)
    got = as_dict(table)
    assert got.keys() == expected.keys()
    for subset, w in expected.items():
        assert got[subset] == pytest.approx(w, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(topk_arrays(), st.booleans())
def test_rows_of_tokens_hold_their_subsets(case, weighted):
    topk, num_experts = case
    weights = np.arange(len(topk)) % 5 + 0.5 if weighted else None
    table, rows = mf.SubsetTable.from_topk_with_rows(topk, num_experts, weights)
    alone = mf.SubsetTable.from_topk(topk, num_experts, weights)
    np.testing.assert_array_equal(table.subsets, alone.subsets)
    np.testing.assert_array_equal(table.weights, alone.weights)
    assert rows.dtype == np.int64 and rows.shape == (len(topk),)
    # Each token's row holds its subset (a plain dictionary of the rows as reference).
    row_of = {tuple(int(e) for e in row): i for i, row in enumerate(table.subsets)}
    assert rows.tolist() == [row_of[tuple(sorted(int(e) for e in t))] for t in topk]


@settings(max_examples=100, deadline=None)
@given(topk_arrays())
def test_rows_are_sorted_by_weight_then_ids(case):
    topk, num_experts = case
    table = mf.SubsetTable.from_topk(topk, num_experts=num_experts)
    subsets, weights = table.subsets, table.weights
    assert np.all(np.diff(subsets, axis=1) > 0)
    keys = [(-w, tuple(row)) for row, w in zip(subsets.tolist(), weights, strict=True)]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]
)
def test_any_integer_dtype(dtype):
    topk = np.array([[2, 0], [0, 2], [1, 3]], dtype=dtype)
    table = mf.SubsetTable.from_topk(topk, num_experts=4)
    assert table.subsets.tolist() == [[0, 2], [1, 3]]
    assert table.weights.tolist() == [2.0, 1.0]


def test_from_subsets_adds_repeated_rows():
    table = mf.SubsetTable.from_subsets([[1, 0], [2, 3], [0, 1]], [0.5, 2.0, 1.0], num_experts=4)
    assert as_dict(table) == {(2, 3): 2.0, (0, 1): 1.5}


def test_deterministic_across_calls_and_large_inputs():
    rng = np.random.default_rng(3)
    topk = np.argsort(rng.random((50_000, 64)), axis=1)[:, :6] % 64
    first = mf.SubsetTable.from_topk(topk, num_experts=64)
    second = mf.SubsetTable.from_topk(topk[::-1].copy(), num_experts=64)
    assert np.array_equal(first.subsets, second.subsets)
    assert np.array_equal(first.weights, second.weights)


def test_wide_rows_of_many_experts():
    rng = np.random.default_rng(5)
    topk = np.stack([rng.choice(5000, size=12, replace=False) for _ in range(300)])
    topk = np.concatenate([topk, topk[:50]])
    table = mf.SubsetTable.from_topk(topk, num_experts=5000)
    assert as_dict(table) == reference_table(topk)


def test_prune_by_coverage_keeps_the_shortest_prefix():
    table = mf.SubsetTable.from_subsets([[0, 1], [0, 2], [1, 2], [0, 3]], [5, 3, 1, 1], 4)
    assert len(table.prune(coverage=0.5)) == 1
    half = table.prune(coverage=0.51)
    assert len(half) == 2 and half.coverage == pytest.approx(0.8)
    assert len(table.prune(coverage=1.0)) == 4
    assert table.coverage == 1.0
    twice = half.prune(max_subsets=1)
    assert len(twice) == 1 and twice.coverage == pytest.approx(0.5)


@pytest.mark.parametrize(
    "topk, message",
    [
        ([[0, 4]], "out of range"),
        ([[-1, 2]], "out of range"),
        ([[1, 1]], "repeats expert 1"),
    ],
)
def test_bad_ids_are_named(topk, message):
    with pytest.raises(ValueError, match=message):
        mf.SubsetTable.from_topk(np.array(topk), num_experts=4)
    with pytest.raises(ValueError, match=message):
        mf.SubsetTable.from_topk_with_rows(np.array(topk), num_experts=4)


def test_bad_arguments():
    topk = np.array([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="2-dimensional"):
        mf.SubsetTable.from_topk(np.array([0, 1, 2]), num_experts=4)
    with pytest.raises(TypeError, match="integer expert ids"):
        mf.SubsetTable.from_topk(topk.astype(float), num_experts=4)
    with pytest.raises(ValueError, match="weights has 3 entries"):
        mf.SubsetTable.from_topk(topk, num_experts=4, weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-negative"):
        mf.SubsetTable.from_topk(topk, num_experts=4, weights=[1.0, -2.0])
    with pytest.raises(ValueError, match="non-negative"):
        mf.SubsetTable.from_topk(topk, num_experts=4, weights=[1.0, np.nan])
    with pytest.raises(ValueError, match="num_experts"):
        mf.SubsetTable.from_topk(topk, num_experts=0)
    with pytest.raises(ValueError, match="more than num_experts"):
        mf.SubsetTable.from_topk(topk, num_experts=1)
    with pytest.raises(ValueError, match=r"k .* must be in"):
        mf.SubsetTable.from_topk(np.zeros((2, 17), dtype=int), num_experts=100)
    with pytest.raises(ValueError, match="0 columns"):
        mf.SubsetTable.from_topk(np.zeros((2, 0), dtype=int), num_experts=4)
    # pyo3 alone would raise OverflowError, which `except ValueError` misses.
    with pytest.raises(ValueError, match="num_experts must be at least 1, got -3"):
        mf.SubsetTable.from_topk(topk, num_experts=-3)
    with pytest.raises(ValueError, match="num_experts = 18446744073709551616 is out of range"):
        mf.SubsetTable.from_topk(topk, num_experts=2**64)
    with pytest.raises(TypeError, match="num_experts must be an int, got bool"):
        mf.SubsetTable.from_topk(topk, num_experts=True)


def test_bad_prune_arguments():
    table = mf.SubsetTable.from_topk(np.array([[0, 1], [1, 2]]), num_experts=4)
    for coverage in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="coverage must be in"):
            table.prune(coverage=coverage)
    with pytest.raises(ValueError, match="max_subsets must be at least 1"):
        table.prune(max_subsets=0)
    with pytest.raises(ValueError, match="coverage or max_subsets"):
        table.prune()


def test_expert_index_lists_rows_of_each_expert():
    table = mf.SubsetTable.from_subsets([[0, 1], [0, 2], [1, 3]], [3, 2, 1], 4)
    offsets, rows = table.expert_index()
    got = [sorted(rows[offsets[e] : offsets[e + 1]].tolist()) for e in range(4)]
    expected = [[r for r, s in enumerate(table.subsets.tolist()) if e in s] for e in range(4)]
    assert got == expected


def test_expert_load_sums_row_weights():
    table = mf.SubsetTable.from_subsets([[0, 1], [0, 2]], [3, 2], 3)
    assert table.expert_load().tolist() == [5.0, 3.0, 2.0]


def test_weights_that_sum_to_infinity_are_refused():
    # Each weight is finite, the sum is not: expected_cost returned inf / inf = NaN.
    with pytest.raises(ValueError, match="weights sum to inf"):
        mf.SubsetTable.from_subsets([[0, 1], [2, 3]], [1e308, 1e308], num_experts=4)


def test_prune_limit_beyond_int64_is_a_value_error():
    table = mf.SubsetTable.from_topk(np.array([[0, 1], [1, 2]]), num_experts=4)
    with pytest.raises(ValueError, match="max_subsets = 18446744073709551616 is out of range"):
        table.prune(max_subsets=2**64)
    assert len(table.prune(max_subsets=np.int64(1))) == 1
