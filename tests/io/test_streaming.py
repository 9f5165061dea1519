"""Tables built chunk by chunk and merged equal the one-shot table exactly."""

from itertools import pairwise

import moefast as mf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moefast.io.streaming import SubsetTableBuilder, table_from_arrays, table_to_arrays
from support.reference import reference_table
from support.strategies import topk_arrays


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


# ---------------------------------------------------------------- chunked reading


def small_trace(tokens: int = 500, weighted: bool = False, seed: int = 0) -> mf.Trace:
    trace = mf.synthetic_trace(tokens, 16, 3, 4, seed=seed, layer_ids=[3, 4, 5, 7])
    if weighted:
        trace.weights = np.random.default_rng(seed).integers(0, 5, tokens) / 2
    return trace


def concatenated(chunks: list[mf.Trace]) -> mf.Trace:
    first = chunks[0]
    weights = None if first.weights is None else np.concatenate([c.weights for c in chunks])
    topk = np.concatenate([c.topk for c in chunks])
    return mf.Trace(topk, first.num_experts, first.layer_ids, weights)


def assert_same_trace(got: mf.Trace, want: mf.Trace) -> None:
    np.testing.assert_array_equal(got.topk, want.topk)
    assert (got.num_experts, got.layer_ids) == (want.num_experts, want.layer_ids)
    if want.weights is None:
        assert got.weights is None
    else:
        np.testing.assert_array_equal(got.weights, want.weights)


def write_jsonl(trace: mf.Trace, path) -> None:
    import json

    with open(path, "w") as f:
        for t in range(trace.num_tokens):
            for p, layer in enumerate(trace.layer_ids):
                ids = trace.topk[t, p].tolist()
                f.write(json.dumps({"layer": layer, "experts": ids, "token_idx": t}) + "\n")


def test_iter_trace_chunks_npz_shards_and_jsonl(tmp_path):
    trace = small_trace(weighted=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate(np.array_split(np.arange(500), 3)):
        mf.Trace(trace.topk[part], 16, trace.layer_ids, trace.weights[part]).save(
            shards / f"part{i}.npz"
        )
    chunks = list(mf.iter_trace(shards, chunk_tokens=64))
    assert max(c.num_tokens for c in chunks) <= 64
    assert_same_trace(concatenated(chunks), trace)

    unweighted = small_trace(60, seed=1)
    write_jsonl(unweighted, tmp_path / "t.jsonl")
    chunks = list(mf.iter_trace([tmp_path / "t.jsonl"], chunk_tokens=7, num_experts=16))
    assert len(chunks) == 9
    assert_same_trace(concatenated(chunks), unweighted)


@pytest.mark.parametrize("weighted", [False, True])
def test_convert_writes_an_arrow_trace_read_back_exactly(tmp_path, weighted):
    pytest.importorskip("pyarrow")
    trace = small_trace(weighted=weighted)
    trace.save(tmp_path / "t.npz")
    out = tmp_path / "t.arrow"
    assert mf.convert(tmp_path / "t.npz", out, chunk_tokens=128) == 500
    chunks = list(mf.iter_trace(out, chunk_tokens=100))
    assert [c.num_tokens for c in chunks] == [100, 28, 100, 28, 100, 28, 100, 16]
    assert_same_trace(concatenated(chunks), trace)
    assert_same_trace(mf.load_trace(out), trace)


def test_arrow_ids_are_read_without_copy(tmp_path):
    pytest.importorskip("pyarrow")
    from moefast.io.readers.arrow import ArrowTrace

    small_trace().save(tmp_path / "t.npz")
    mf.convert(tmp_path / "t.npz", tmp_path / "t.arrow", chunk_tokens=200)
    arrow = ArrowTrace.open(tmp_path / "t.arrow")
    ids = arrow.batch_layer(0, 1)
    assert ids.shape == (200, 3) and ids.dtype == np.uint8
    assert not ids.flags.owndata and not ids.flags.writeable  # a view of the mapped file


def test_convert_refuses_mixed_models_and_leaves_no_file(tmp_path):
    pytest.importorskip("pyarrow")
    small_trace().save(tmp_path / "a.npz")
    mf.Trace(np.tile(np.arange(3, dtype=np.int32), (5, 4, 1)), 32, [3, 4, 5, 7]).save(
        tmp_path / "b.npz"
    )
    out = tmp_path / "t.arrow"
    with pytest.raises(ValueError, match="differ in num_experts"):
        mf.convert([tmp_path / "a.npz", tmp_path / "b.npz"], out)
    assert list(tmp_path.iterdir()) == sorted(tmp_path.iterdir()) and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_a_foreign_arrow_file_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc

    path = tmp_path / "x.arrow"
    with pyarrow.ipc.new_file(str(path), pa.schema([("a", pa.int32())])) as w:
        w.write_batch(pa.record_batch([pa.array([1, 2], pa.int32())], names=["a"]))
    with pytest.raises(ValueError, match="not a moefast trace"):
        list(mf.iter_trace(path))
    (tmp_path / "y.arrow").write_bytes(b"ARROW1 but nothing else")
    with pytest.raises(ValueError, match="not a readable Arrow"):
        list(mf.iter_trace(tmp_path / "y.arrow"))


def test_cli_convert_joins_traces(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from moefast.cli import main

    trace = small_trace()
    trace.save(tmp_path / "a.npz")
    out = tmp_path / "all.arrow"
    assert (
        main(["convert", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--out", str(out)]) == 0
    )
    assert "1000 tokens" in capsys.readouterr().out
    both = mf.load_trace(out)
    np.testing.assert_array_equal(both.topk, np.concatenate([trace.topk, trace.topk]))


def test_builder_holds_a_bounded_number_of_rows():
    # 200 chunks drawn from 300 subsets: the builder never holds more than about three
    # times the final table's rows, however many chunks come.
    rng = np.random.default_rng(4)
    pool = np.stack([rng.choice(64, 4, replace=False) for _ in range(300)])
    builder = SubsetTableBuilder(64)
    chunks = [pool[rng.integers(0, 300, 100)] for _ in range(200)]
    most = 0
    for chunk in chunks:
        builder.add(chunk)
        most = max(most, builder.rows_held)
    table = builder.finish()
    assert most <= 3 * len(table) + 100
    want = mf.SubsetTable.from_topk(np.concatenate(chunks), 64)
    np.testing.assert_array_equal(table.subsets, want.subsets)
    np.testing.assert_array_equal(table.weights, want.weights)


def trtllm_folder(folder, topk, twins_at=None):
    """A TensorRT-LLM statistics folder of ``topk`` [tokens, layers, k] (E = 16): 5
    iterations of 2 ranks; at iteration ``twins_at`` both ranks hold the same block (tensor
    parallelism), which readers keep once."""
    import json

    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "meta_info.json").write_text(json.dumps({"num_experts": 16}))
    raws: list[dict[str, np.ndarray]] = [{}, {}]
    for it, chunk in enumerate(np.array_split(np.arange(len(topk)), 5)):
        halves = [chunk, chunk] if it == twins_at else np.array_split(chunk, 2)
        for r, mine in enumerate(halves):
            for position, layer in enumerate([3, 4]):
                raws[r][f"{it}_{layer}"] = topk[mine, position].astype(np.int32)
    for r in range(2):
        save_file(raws[r], str(folder / f"rank{r}_raw.safetensors"))


@pytest.mark.parametrize("chunk_tokens", [1, 7, 1000])
def test_trtllm_raw_folders_stream_in_chunks_like_load_trace(tmp_path, chunk_tokens):
    pytest.importorskip("safetensors")
    from moefast.io.streaming import iter_trace

    rng = np.random.default_rng(6)
    topk = np.stack(
        [np.stack([rng.choice(16, 4, replace=False) for _ in range(2)]) for _ in range(61)]
    )
    trtllm_folder(tmp_path / "t", topk, twins_at=2)
    whole = mf.load_trace(tmp_path / "t")
    assert whole.layer_ids == [3, 4]
    chunks = list(iter_trace(tmp_path / "t", chunk_tokens=chunk_tokens))
    sizes = [c.num_tokens for c in chunks]
    assert all(s == chunk_tokens for s in sizes[:-1]) and 0 < sizes[-1] <= chunk_tokens
    np.testing.assert_array_equal(np.concatenate([c.topk for c in chunks]), whole.topk)
    assert all(c.layer_ids == [3, 4] and c.num_experts == 16 for c in chunks)
    # the twin block counts once: 61 tokens less the duplicated iteration's second copy
    assert whole.num_tokens == 61
    got = mf.plan(tmp_path / "t", 2, 10, chunk_tokens=chunk_tokens, holdout=0, progress=False)
    want = mf.plan(whole.tables(), 2, 10, progress=False)
    for a, b in zip(got.placements, want.placements, strict=True):
        np.testing.assert_array_equal(a.replicas, b.replicas)


def test_trtllm_raw_ids_out_of_range_name_the_folder(tmp_path):
    pytest.importorskip("safetensors")
    from moefast.io.streaming import iter_trace

    topk = np.tile(np.arange(4), (10, 2, 1))
    topk[7, 1, 0] = 16
    trtllm_folder(tmp_path / "bad", topk)
    with pytest.raises(ValueError, match=r"bad.*out of range"):
        list(iter_trace(tmp_path / "bad", chunk_tokens=3))


def test_a_streamed_trtllm_folder_holds_out_its_last_tokens(tmp_path):
    pytest.importorskip("safetensors")
    trace = mf.synthetic_trace(700, 16, 4, 2, seed=3)
    trtllm_folder(tmp_path / "t", trace.topk, twins_at=1)
    whole = mf.load_trace(tmp_path / "t")
    got = mf.plan(tmp_path / "t", 2, 10, chunk_tokens=64, progress=False)
    want = mf.plan(whole, 2, 10, split_by="time", progress=False)
    assert got.settings["cost_basis"] == "held-out"
    for a, b in zip(got.placements, want.placements, strict=True):
        np.testing.assert_array_equal(a.replicas, b.replicas)
    np.testing.assert_allclose(got.layer_costs, want.layer_costs, rtol=1e-12)
