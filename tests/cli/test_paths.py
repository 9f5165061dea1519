"""Output paths of the commands: an output is never one of the inputs (same file by path
or inode, or inside an input folder), and a bad output is refused before the work."""

from __future__ import annotations

import os

import moefast as mf
import numpy as np
import pytest
from moefast._util.atomic import check_not_input
from moefast.cli import main
from moefast.io.streaming import convert, iter_trace

pytest.importorskip("pyarrow")


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.npz"
    mf.synthetic_trace(60, 8, 2, 2, seed=1).save(path)
    return path


def test_check_not_input_sees_links_and_folders(tmp_path, trace_file):
    link = tmp_path / "link.npz"
    os.link(trace_file, link)
    with pytest.raises(ValueError, match="is the input"):
        check_not_input(link, [trace_file])
    with pytest.raises(ValueError, match="is the input"):
        check_not_input(tmp_path / "." / "t.npz", [trace_file])
    with pytest.raises(ValueError, match="lies in the input folder"):
        check_not_input(tmp_path / "new.arrow", [tmp_path])
    check_not_input(tmp_path / "other.npz", [trace_file, None])


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "{t}", "--gpus", "2", "--slots", "4", "--format", "json", "--out", "{t}"],
        ["convert", "{t}", "--out", "{t}"],
        ["synth", "--experts", "8", "--k", "2", "--layers", "2", "--tokens", "50",
         "--load", "{t}", "--out", "{t}"],
    ],
)  # fmt: skip
def test_a_command_refuses_to_overwrite_its_input(trace_file, capsys, argv):
    before = trace_file.read_bytes()
    code = main([a.format(t=trace_file) for a in argv])
    assert code == 2
    assert "is the input" in capsys.readouterr().err
    assert trace_file.read_bytes() == before


def test_convert_never_reads_its_own_output_as_a_shard(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(3):
        mf.synthetic_trace(100, 8, 2, 1, seed=s).save(shards / f"{s}.npz")
    with pytest.raises(ValueError, match="lies in the input folder"):
        convert(shards, shards / "all.arrow")
    assert not (shards / "all.arrow").exists()
    assert convert(shards, tmp_path / "all.arrow") == 300
    # A folder holding a trace and its conversion would count every token twice.
    os.replace(tmp_path / "all.arrow", shards / "all.arrow")
    with pytest.raises(ValueError, match=r"both \.arrow"):
        list(iter_trace(shards))


def test_convert_refuses_a_folder_output_before_reading(tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    read = []
    monkeypatch.setattr("moefast.io.streaming.iter_file", lambda *a, **k: read.append(a))
    assert main(["convert", str(tmp_path / "missing.npz"), "--out", str(tmp_path)]) == 2
    trace = tmp_path / "t.npz"
    mf.synthetic_trace(20, 8, 2, 1, seed=1).save(trace)
    assert main(["convert", str(trace), "--out", str(tmp_path / "out")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert read == []


@pytest.mark.parametrize(
    ("flag", "value"), [("--moe-layers", "0-400000000"), ("--num-layers", "300000000")]
)
def test_huge_layer_counts_are_refused_up_front(trace_file, capsys, flag, value):
    out = trace_file.with_name("p.json")
    argv = ["plan", str(trace_file), "--gpus", "2", "--slots", "4", "--out", str(out), flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "10000" in err and "\n" not in err.strip()
    assert not out.exists()


def test_layers_are_positions_keeps_request_ids(tmp_path, monkeypatch):
    trace = mf.Trace(
        np.arange(48).reshape(12, 2, 2) % 8, 8, [0, 1], request_ids=np.repeat(np.arange(6), 2)
    )
    path = tmp_path / "t.npz"
    trace.save(path)
    seen = []

    def plan(trace, *args, **kwargs):
        seen.append(trace)
        raise ValueError("stop here")

    monkeypatch.setattr("moefast.cli.output.plan", plan)
    argv = ["plan", str(path), "--gpus", "2", "--slots", "4", "--moe-layers", "3-5"]
    assert main([*argv, "--layers-are-positions", "--out", str(tmp_path / "p.json")]) == 2
    assert seen[0].layer_ids == [3, 4]
    np.testing.assert_array_equal(seen[0].request_ids, trace.request_ids)
