"""Re-planning whole models (`plan(current=...)`, `moefast plan --current`) with a
topology, with streamed trace files and on executors: each layer is what `optimize`
re-plans for it, the executor's result is the in-process one, and a served placement that
does not fit the trace is refused before the work, naming the layer or file."""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import moefast as mf
import numpy as np
import pytest
from moefast.cli import main
from moefast.cli.options import max_moves_for, moves_option
from moefast.moves import CopyPrice, copies
from moefast.search.node_plan import NODE_AWARE, SERVED
from moefast.topology.times import Topology, expected_time
from support.topology_reference import brute_group_nodes

GPUS, SLOTS, EXPERTS = 8, 5, 32
TOPO = Topology.preset("h800_normal", gpus_per_node=4)


def workload(seed: int, layer_ids: list[int] | None = None) -> mf.Trace:
    return mf.synthetic_trace(1500, EXPERTS, 4, 2, seed=seed, layer_ids=layer_ids or [3, 5])


def same_models(got: mf.ModelPlacement, want: mf.ModelPlacement) -> None:
    for a, b in zip(got.placements, want.placements, strict=True):
        np.testing.assert_array_equal(a.replicas, b.replicas)
    assert got.settings["replan"] == want.settings["replan"]
    assert got.settings.get("topology") == want.settings.get("topology")


def test_plan_re_plans_node_aware_as_optimize_does_each_layer():
    before, after = workload(1), workload(2)
    served = mf.plan(before, GPUS, SLOTS, holdout=0, topology=TOPO)
    model = mf.plan(after, GPUS, SLOTS, holdout=0, current=served, max_moves=4, topology=TOPO)
    summary = model.settings["replan"]
    assert summary["unit"].startswith("us") and summary["max_moves"] == 4
    gained = False
    for i, (table, old, new) in enumerate(
        zip(after.tables(), served.placements, model.placements, strict=True)
    ):
        pruned = table.prune(coverage=0.99)
        n = copies(old, new)
        assert n == summary["copies"][i] <= 4
        assert (new.replicas.sum(axis=0) == SLOTS).all()
        time = expected_time(pruned, new, TOPO)
        stale = expected_time(pruned, old, TOPO)
        assert summary["costs"][i] == pytest.approx(time)
        assert summary["stale_costs"][i] == pytest.approx(stale)
        assert time <= stale + 1e-9
        gained |= time < stale - 1e-9
        # The layer as optimize re-plans it, unless the full node-aware re-plan fits the
        # budget and is faster.
        alone = mf.optimize(pruned, GPUS, SLOTS, current=old, max_moves=4, topology=TOPO)
        if not np.array_equal(alone.replicas, new.replicas):
            assert summary["full_copies"][i] <= 4
            assert time < expected_time(pruned, alone, TOPO)
        # Scored with communication on the trace's tokens, beside EPLB and compute-only.
        times = model.settings["topology"]["layer_times_us"]
        assert times[NODE_AWARE][i] == pytest.approx(expected_time(table, new, TOPO))
        assert times[SERVED][i] == pytest.approx(expected_time(table, old, TOPO))
    assert gained
    assert summary["curve"][0]["cost"] == pytest.approx(np.mean(summary["stale_costs"]))


def test_groups_stay_on_their_nodes_and_a_served_placement_must_keep_them():
    before, after = workload(1), workload(2)
    served = mf.plan(before, GPUS, SLOTS, holdout=0, topology=TOPO, num_groups=4)
    model = mf.plan(
        after, GPUS, SLOTS, holdout=0, current=served, max_moves=3, topology=TOPO, num_groups=4
    )
    for p in model.placements:
        assert brute_group_nodes(p, 4, 4) is not None
    spread = mf.plan(before, GPUS, SLOTS, holdout=0, method="round_robin")
    with pytest.raises(ValueError, match="layer 3: "):
        mf.plan(after, GPUS, SLOTS, current=spread, max_moves=3, topology=TOPO, num_groups=4)


def test_bad_combinations_and_served_placements_are_refused():
    after = workload(2)
    served = mf.plan(workload(1), GPUS, SLOTS, holdout=0)
    with pytest.raises(ValueError, match=r"CopyPrice by link .* needs topology="):
        mf.plan(after, GPUS, SLOTS, current=served, copy_cost=CopyPrice(0.0, 0.01))
    other = mf.plan(mf.synthetic_trace(500, 40, 4, 2, seed=1, layer_ids=[3, 5]), GPUS, SLOTS)
    with pytest.raises(ValueError, match="current, layer 3: current has 40 experts"):
        mf.plan(after, GPUS, SLOTS, current=other, max_moves=2)
    # 4 experts on each GPU of 6 slots: the node-aware search moves within full GPUs.
    thin = [mf.Placement(np.arange(EXPERTS)[:, None] % GPUS == np.arange(GPUS))] * 2
    with pytest.raises(ValueError, match="needs every GPU full"):
        mf.plan(after, GPUS, 6, current=thin, max_moves=2, topology=TOPO)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two shards of one workload and the placement served before it."""
    folder = tmp_path_factory.mktemp("replan_files")
    after = workload(2)
    paths = []
    for i, (a, b) in enumerate([(0, 700), (700, after.num_tokens)]):
        paths.append(folder / f"part{i}.npz")
        mf.Trace(after.topk[a:b], EXPERTS, after.layer_ids).save(paths[-1])
    served = mf.plan(workload(1), GPUS, SLOTS, holdout=0, topology=TOPO)
    served.save(folder / "served.json", "json")
    return paths, served, folder


def test_an_executor_re_plans_exactly_like_one_process(files):
    paths, served, _ = files
    runs = [
        {"max_moves": 3},
        {"max_moves": 3, "topology": TOPO},
    ]
    local = [mf.plan(paths, GPUS, SLOTS, current=served, chunk_tokens=400, **o) for o in runs]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for options, want in zip(runs, local, strict=True):
            got = mf.plan(paths, GPUS, SLOTS, current=served, executor=pool, **options)
            same_models(got, want)
    # Streamed (held out: the last tokens of each file) against the same tables in memory
    # planned in-sample would differ; with holdout=0 they are the trace's own tables.
    whole = mf.plan(workload(2), GPUS, SLOTS, holdout=0, current=served, max_moves=3)
    streamed = mf.plan(paths, GPUS, SLOTS, holdout=0, current=served, max_moves=3)
    for a, b in zip(whole.placements, streamed.placements, strict=True):
        np.testing.assert_array_equal(a.replicas, b.replicas)


def test_cli_re_plans_streamed_files_and_names_a_served_file_that_does_not_fit(files, capsys):
    paths, _, folder = files
    out = folder / "new.json"
    base = ["plan", *map(str, paths), "--gpus", str(GPUS), "--slots", str(SLOTS)]
    base += ["--out", str(out), "--format", "json", "--current", str(folder / "served.json")]
    assert main([*base, "--max-moves", "3", "--chunk-tokens", "500"]) == 0
    text = capsys.readouterr().out
    assert "gain against moves" in text and "2 trace file(s) read by streaming" in text
    topo = ["--topology", "h800_normal", "--gpus-per-node", "4"]
    assert main([*base, "--max-moves", "3", *topo]) == 0
    text = capsys.readouterr().out
    assert "with communication" in text and "mean cost (us per token" in text
    saved = mf.load_placement(out)
    assert saved.settings["replan"]["max_moves"] == 3
    # Served placements of other layers, or of other experts, are refused before counting.
    other = workload(1, layer_ids=[3, 4])
    mf.plan(other, GPUS, SLOTS, holdout=0).save(folder / "other_layers.json", "json")
    wide = mf.synthetic_trace(500, 40, 4, 2, seed=1, layer_ids=[3, 5])
    mf.plan(wide, GPUS, SLOTS, holdout=0).save(folder / "wide.json", "json")
    for served, message in (("other_layers.json", "no layer 5"), ("wide.json", "40 experts")):
        args = [*base[:-1], str(folder / served), "--max-moves", "3", "--chunk-tokens", "500"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "against the trace" in err or "current, layer" in err, err
        assert message in err, err


def _sglang_rows(path) -> np.ndarray:
    return np.array(json.loads(path.read_text())["physical_to_logical_map"])


@pytest.mark.parametrize("served_method", ["round_robin", "eplb"])
def test_a_replanned_sglang_file_changes_exactly_the_copied_slots(tmp_path, served_method):
    trace = mf.synthetic_trace(1_500, num_experts=32, k=4, num_layers=3, seed=4)
    served = mf.plan(trace, 4, 9, method=served_method, progress=False)
    served.save(tmp_path / "cur.json", "sglang", num_layers=3, moe_layers=[0, 1, 2])
    current = mf.load_placement(tmp_path / "cur.json", num_gpus=4)
    new = mf.plan(trace, 4, 9, current=current, max_moves=5, progress=False)
    new.save(tmp_path / "new.json", "sglang", num_layers=3, moe_layers=[0, 1, 2])
    changed = (_sglang_rows(tmp_path / "cur.json") != _sglang_rows(tmp_path / "new.json")).sum(1)
    reported = new.settings["replan"]["copies"]
    assert changed.tolist() == list(reported)
    assert sum(reported) > 0
    # The copies are also what `copies` counts between the grids.
    for old, placed, n in zip(current.placements, new.placements, reported, strict=True):
        assert copies(old, placed) == n


def test_max_moves_takes_a_share_of_the_slots():
    assert max_moves_for(moves_option("10%"), 8, 9) == 7  # 10% of 72 slots, rounded down
    assert max_moves_for(moves_option("7"), 8, 9) == 7
    assert max_moves_for(moves_option("100%"), 8, 9) == 72
    with pytest.raises(argparse.ArgumentTypeError, match=r"0%\.\.100%"):
        moves_option("150%")
