"""Planning trace files by streaming and on executors gives the in-memory plan exactly."""

import multiprocessing
import os
import re
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import pairwise

import moefast as mf
import numpy as np
import pytest
from moefast.cli import main
from moefast.planning.executors import RayExecutor, tables_from_files

GPUS, SLOTS = 4, 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A weighted 6-layer trace and the same tokens as three npz shards."""
    folder = tmp_path_factory.mktemp("shards")
    trace = mf.synthetic_trace(6000, 32, 4, 6, seed=2, layer_ids=[3, 4, 5, 6, 7, 9])
    trace.weights = np.random.default_rng(0).integers(1, 4, trace.num_tokens).astype(float)
    bounds = [0, 2500, 2501, 6000]
    paths = []
    for i, (a, b) in enumerate(pairwise(bounds)):
        paths.append(folder / f"part{i}.npz")
        mf.Trace(trace.topk[a:b], 32, trace.layer_ids, trace.weights[a:b]).save(paths[-1])
    return trace, paths


def in_memory(trace: mf.Trace, **options) -> mf.ModelPlacement:
    """The single-process plan of the whole trace, in-sample as streamed plans are."""
    return mf.plan(trace.tables(), GPUS, SLOTS, progress=False, **options)


def assert_same_model(got: mf.ModelPlacement, want: mf.ModelPlacement) -> None:
    for a, b in zip(got.placements, want.placements, strict=True):
        np.testing.assert_array_equal(a.replicas, b.replicas)
    np.testing.assert_array_equal(got.layer_costs, want.layer_costs)
    np.testing.assert_array_equal(got.lower_bounds, want.lower_bounds)
    assert {k: v for k, v in got.settings.items() if k != "cost_note"} == {
        k: v for k, v in want.settings.items() if k != "cost_note"
    }


def spawn_pool(workers: int = 2) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def test_streamed_tables_and_plan_equal_the_in_memory_ones(shards):
    trace, paths = shards
    tables, layer_ids = tables_from_files(paths, chunk_tokens=333, progress=False)
    assert layer_ids == trace.layer_ids
    for got, want in zip(tables, trace.tables(), strict=True):
        np.testing.assert_array_equal(got.subsets, want.subsets)
        np.testing.assert_array_equal(got.weights, want.weights)
    got = mf.plan(paths, GPUS, SLOTS, seed=5, chunk_tokens=500, holdout=0)
    assert got.layer_ids == trace.layer_ids
    assert_same_model(got, in_memory(trace, seed=5))


@pytest.mark.slow
def test_a_process_pool_plans_exactly_like_one_process(shards, tmp_path):
    pytest.importorskip("pyarrow")
    trace, paths = shards
    arrow = tmp_path / "t.arrow"
    mf.convert(paths, arrow, chunk_tokens=300)  # 20 batches: 3 ranges of the file
    with spawn_pool() as pool:
        got = mf.plan([arrow, *paths], GPUS, SLOTS, seed=5, holdout=0, executor=pool)
        assert got.layer_ids == trace.layer_ids
        # the trace twice (Arrow copy + shards): the same tables with doubled counts
        assert_same_model(
            got,
            in_memory(
                mf.Trace(
                    np.concatenate([trace.topk] * 2),
                    32,
                    trace.layer_ids,
                    np.concatenate([trace.weights] * 2),
                ),
                seed=5,
            ),
        )
        # tables in hand, layers optimized on the workers
        tables = trace.tables()
        got = mf.plan(tables, GPUS, SLOTS, seed=5, executor=pool)
        assert_same_model(got, mf.plan(tables, GPUS, SLOTS, seed=5, progress=False))


def test_a_forking_pool_is_refused(shards):
    _, paths = shards
    with (
        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool,
        pytest.raises(ValueError, match="spawn"),
    ):
        mf.plan(paths, GPUS, SLOTS, executor=pool)


class DyingExecutor(Executor):
    """Every task's worker dies, as a killed process pool worker does."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        future.set_exception(BrokenProcessPool("a process was terminated abruptly"))
        return future


def test_a_dead_worker_names_the_file_it_held(shards):
    _, paths = shards
    with pytest.raises(RuntimeError, match=r"counting .*part\d\.npz failed: BrokenProcessPool"):
        mf.plan(paths, GPUS, SLOTS, executor=DyingExecutor())
    with pytest.raises(RuntimeError, match="planning layer 0 failed"):
        mf.plan([mf.SubsetTable.from_topk([[0, 1]], 32)], GPUS, SLOTS, executor=DyingExecutor())


def test_bad_ids_in_a_shard_name_the_shard(tmp_path):
    np.savez(tmp_path / "bad.npz", topk=np.array([[[0, 40]]]), num_experts=np.int64(50))
    good = mf.Trace(np.array([[[0, 1]]]), 32)
    good.save(tmp_path / "a.npz")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        tables_from_files([tmp_path / "a.npz", tmp_path / "bad.npz"])


def test_cli_plans_many_files_and_writes_nothing_on_failure(shards, tmp_path, capsys):
    trace, paths = shards
    out = tmp_path / "p.json"
    args = ["--gpus", "4", "--slots", "10", "--format", "json"]
    files = [str(p) for p in paths]
    in_sample = ["--holdout", "0"]
    assert (
        main(["plan", *files, *args, *in_sample, "--chunk-tokens", "700", "--out", str(out)]) == 0
    )
    assert "3 trace file(s)" in capsys.readouterr().out
    got = mf.load_placement(out)
    want = in_memory(trace)
    for a, b in zip(got.placements, want.placements, strict=True):
        np.testing.assert_array_equal(a.replicas, b.replicas)
    bad = tmp_path / "bad.npz"
    np.savez(bad, topk=np.array([[[0, 40]] * 6]), num_experts=np.int64(32))
    failed = tmp_path / "failed.json"
    assert (
        main(["plan", *files, str(bad), *args, "--out", str(failed)]) == 2
    )  # bad input: one line, status 2
    assert not failed.exists()


def require_ray() -> None:
    """Skips without the ray extra, except in CI (.ci/run sets MOEFAST_REQUIRE_RAY), where a
    missing ray fails the test."""
    if os.environ.get("MOEFAST_REQUIRE_RAY"):
        import ray  # noqa: F401
    else:
        pytest.importorskip(
            "ray", reason="the ray extra is not installed (pip install 'moefast[ray]')"
        )


def die() -> None:
    """Ends the worker process that runs it, as an out-of-memory kill does."""
    os._exit(3)


# Pickled by value, so that a Ray worker, which cannot import the tests, runs it.
die.__module__ = "__main__"


class KillingExecutor(Executor):
    """Runs every task as `die` on the workers of ``inner``: real worker deaths."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner

    def submit(self, fn, /, *args, **kwargs):
        return self.inner.submit(die)


@pytest.mark.slow
def test_a_killed_pool_worker_names_its_file_and_the_cli_writes_nothing(
    shards, tmp_path, monkeypatch, capsys
):
    import moefast.cli.output

    class KillingPool(ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            return super().submit(os._exit, 3)

    _, paths = shards
    monkeypatch.setattr(moefast.cli.output, "ProcessPoolExecutor", KillingPool)
    out = tmp_path / "p.json"
    files = [str(p) for p in paths]
    args = ["--gpus", "4", "--slots", "10", "--format", "json", "--workers", "2", "--out", str(out)]
    assert main(["plan", *files, *args]) == 2
    assert re.search(r"counting .*part\d\.npz failed: BrokenProcessPool", capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.slow
def test_the_ray_path_equals_the_local_plan(shards):
    require_ray()
    trace, paths = shards
    with RayExecutor("local", num_workers=2) as ray_pool:
        got = mf.plan(paths, GPUS, SLOTS, seed=5, executor=ray_pool)
        whole = mf.plan(paths, GPUS, SLOTS, seed=5, holdout=0, executor=ray_pool)
        with pytest.raises(RuntimeError, match=r"counting .*part\d\.npz failed: \w*Worker"):
            mf.plan(paths, GPUS, SLOTS, executor=KillingExecutor(ray_pool))
    # held out as the local streamed plan holds out; in-sample, the in-memory plan
    assert got.settings["cost_basis"] == "held-out"
    assert_same_model(got, mf.plan(paths, GPUS, SLOTS, seed=5))
    assert_same_model(whole, in_memory(trace, seed=5))


def test_one_streamed_file_holds_out_its_tail_as_the_in_memory_plan(shards, tmp_path):
    trace, _ = shards
    path = tmp_path / "whole.npz"
    trace.save(path)
    got = mf.plan(path, GPUS, SLOTS, seed=5, chunk_tokens=333, progress=False)
    want = mf.plan(trace, GPUS, SLOTS, seed=5, split_by="time", progress=False)
    assert got.settings["cost_basis"] == want.settings["cost_basis"] == "held-out"
    assert "planned on 4800 tokens, scored on 1200 held-out tokens" in got.settings["cost_note"]
    for a, b in zip(got.placements, want.placements, strict=True):
        np.testing.assert_array_equal(a.replicas, b.replicas)
    np.testing.assert_allclose(got.layer_costs, want.layer_costs, rtol=1e-12)
    np.testing.assert_allclose(got.lower_bounds, want.lower_bounds, rtol=1e-12)
    for method, costs in want.evaluation.costs.items():
        np.testing.assert_allclose(got.evaluation.costs[method], costs, rtol=1e-12)
    assert got.evaluation.gain_interval is None  # streamed tables keep no token order


def test_many_streamed_files_hold_out_the_tail_of_each(shards):
    from moefast.io.streaming import held_out_tokens

    trace, paths = shards
    bounds = [0, 2500, 2501, 6000]
    train_at, test_at = [], []
    for a, b in pairwise(bounds):
        cut = b - held_out_tokens(b - a, 0.2)
        train_at.append(np.arange(a, cut))
        test_at.append(np.arange(cut, b))
    assert [len(t) for t in test_at] == [500, 0, 700]  # a 1-token file only trains
    train = trace.select_tokens(np.concatenate(train_at))
    test = trace.select_tokens(np.concatenate(test_at))
    got = mf.plan(paths, GPUS, SLOTS, seed=5, chunk_tokens=400, progress=False)
    want = mf.plan(train.tables(), GPUS, SLOTS, seed=5, progress=False)
    for a, b, table, cost in zip(
        got.placements, want.placements, test.tables(), got.layer_costs, strict=True
    ):
        np.testing.assert_array_equal(a.replicas, b.replicas)
        assert cost == pytest.approx(mf.expected_cost(table, a), rel=1e-12)
    assert got.settings["cost_basis"] == "held-out"
    assert "each of 3 file(s)" in got.settings["cost_note"]
    with pytest.raises(ValueError, match="split by time"):
        mf.plan(paths, GPUS, SLOTS, split_by="request")


def test_few_streamed_tokens_are_scored_in_sample(tmp_path):
    trace = mf.synthetic_trace(300, 32, 4, 2, seed=1)
    trace.save(tmp_path / "small.npz")
    got = mf.plan(tmp_path / "small.npz", GPUS, SLOTS, progress=False)
    assert got.settings["cost_basis"] == "in-sample"
    assert "300 tokens, fewer than the 500" in got.settings["cost_note"]
    assert_same_model(got, in_memory(trace))


@pytest.mark.slow
def test_a_process_pool_holds_out_like_one_process(shards, tmp_path):
    pytest.importorskip("pyarrow")
    _, paths = shards
    arrow = tmp_path / "t.arrow"
    mf.convert(paths, arrow, chunk_tokens=300)  # the tail starts inside a batch range
    local = mf.plan([arrow, *paths], GPUS, SLOTS, seed=5, progress=False)
    with spawn_pool() as pool:
        got = mf.plan([arrow, *paths], GPUS, SLOTS, seed=5, executor=pool)
    assert got.settings["cost_basis"] == "held-out"
    assert_same_model(got, local)
    np.testing.assert_array_equal(
        got.evaluation.costs["round_robin"], local.evaluation.costs["round_robin"]
    )


def test_progress_bars_over_files_and_layers(shards, monkeypatch, capsys):
    _, paths = shards
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    mf.plan(paths, GPUS, SLOTS, progress=True)
    err = capsys.readouterr().err
    # the bars as first drawn (with leave=False the last state may be wiped before it shows)
    assert re.search(r"counting files: .*\| 0/3 ", err), err
    assert re.search(r"planning layers: .*\| 0/6 ", err), err


class ReturningExecutor(Executor):
    """Runs nothing: every future returns ``value``."""

    def __init__(self, value) -> None:
        self.value = value

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        future.set_result(self.value)
        return future


def test_what_is_not_an_executor_is_a_type_error(shards):
    _, paths = shards
    with pytest.raises(TypeError, match=r"executor must be a concurrent\.futures\.Executor"):
        mf.plan(paths, GPUS, SLOTS, executor=[1, 2])


@pytest.mark.parametrize("value", [None, 3, (1, 2, 3)])
def test_a_future_of_the_wrong_form_names_the_worker(shards, value):
    _, paths = shards
    with pytest.raises(TypeError, match=r"the worker counting .*part\d\.npz returned"):
        mf.plan(paths, GPUS, SLOTS, executor=ReturningExecutor(value))
    table = mf.SubsetTable.from_topk([[0, 1]], 32)
    with pytest.raises(TypeError, match="the worker planning layer 0 returned"):
        mf.plan([table], GPUS, SLOTS, executor=ReturningExecutor(value))
