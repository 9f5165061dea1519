"""Hostile files and command lines: every bad input a user
can give is a ValueError or TypeError naming the file (or the CLI's one line, status 2);
nothing is allocated by the size a file claims; nothing is truncated or cast; no save
leaves a partial file."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import zipfile

import moefast as mf
import numpy as np
import pytest
import yaml
from moefast.cli import main
from moefast.data import GPTOSS20B_DECODE
from moefast.io.engines import load_placement
from moefast.placement import ModelPlacement

E, G, SLOTS = 6, 2, 4


def small_model(layer_ids=(0, 1)) -> ModelPlacement:
    lists = [[0], [0], [0, 1], [1], [1], [0, 1]]
    placement = mf.Placement.from_lists(lists, G)
    return ModelPlacement(
        [placement] * len(layer_ids), SLOTS, list(layer_ids), [1.5] * len(layer_ids)
    )


def saved(tmp_path, fmt: str) -> tuple:
    """A small placement written in `fmt`, its path and its parsed content."""
    path = tmp_path / f"p.{'yaml' if fmt == 'trtllm' else 'json'}"
    small_model().save(path, fmt, num_layers=2, moe_layers=[0, 1])
    text = path.read_text()
    return path, (yaml.safe_load(text) if fmt == "trtllm" else json.loads(text))


def rewrite(path, data) -> None:
    if path.suffix == ".yaml":
        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(json.dumps(data))


def first_map(data: dict, fmt: str) -> list:
    """The first layer's list of expert ids in a parsed placement file."""
    if fmt == "sglang":
        return data["physical_to_logical_map"][0]
    if fmt == "eplb":
        return data["phy2log"][0]
    if fmt == "trtllm":
        return next(iter(data["initial_global_assignments"].values()))
    return data["layer_list"][0]["device_list"][0]["device_expert"]


# Finding 3: runaway memory from small files.

MEMORY_CAPPED = textwrap.dedent(
    """
    import resource, sys
    limit = 3 << 30  # 3 GiB of address space: an id of 3e9 would ask for 6 GB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from moefast.io.engines import load_placement
    try:
        load_placement(sys.argv[1], num_gpus=2)
    except ValueError as err:
        print("ValueError", err)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS")
@pytest.mark.parametrize("fmt", ["sglang", "eplb", "trtllm", "vllm-ascend"])
def test_a_huge_expert_id_is_refused_before_anything_is_allocated(tmp_path, fmt):
    path, data = saved(tmp_path, fmt)
    first_map(data, fmt)[0] = 3_000_000_000
    rewrite(path, data)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CAPPED, str(path)], capture_output=True, text=True, env=env
    )
    assert done.stdout.startswith("ValueError"), done.stderr[-2000:]
    assert str(path) in done.stdout and "3000000000" in done.stdout


@pytest.mark.parametrize("layer", [50_000_000, 10**30])
def test_a_jsonl_layer_beyond_any_model_is_refused(tmp_path, layer):
    """`"layer": 50000000` made `moefast plan` (sglang) lay out 50 million rows; 10**30
    gave an OverflowError traceback."""
    path = tmp_path / "t.jsonl"
    lines = [{"layer": layer, "experts": [0, 1], "token_idx": t} for t in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ValueError, match=r"t\.jsonl, line 1: 'layer' = \d+ out of range"):
        mf.load_trace(path)
    out = tmp_path / "p.json"
    assert main(["plan", str(path), "--gpus", "2", "--slots", "2", "--out", str(out)]) == 2
    assert not out.exists()


# Finding 4 (and 6): readers cast instead of validating.


def fingerprint(layers: dict) -> dict:
    return {"router_data": [{"token_0": layers}, {"token_1": layers}]}


@pytest.mark.parametrize(
    "layers, match",
    [
        ({"layer_0": {"selected_experts": [1.5, 2]}}, "integer ids"),
        ({"layer_0": {"selected_experts": [True, 2]}}, "integer ids"),
        ({"layer_0": {"selected_experts": ["1", 2]}}, "integer ids"),
        ({"layer_0": {"selected_experts": [2**70, 2]}}, "out of range"),
        (
            {"layer_0": {"selected_experts": [1, 2]}, "layer_00": {"selected_experts": [1, 2]}},
            "twice",
        ),
        ({"layer_0": {"selected_experts": []}}, "non-empty list"),
        ({"layer_99999999": {"selected_experts": [1, 2]}}, "out of range"),
    ],
)
def test_fingerprint_ids_are_validated_not_cast(tmp_path, layers, match):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(fingerprint(layers)))
    with pytest.raises(ValueError, match=match) as info:
        mf.load_trace(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"router_data": [{"token_0": {"layer_0": {"selected_experts": [1e400, 2]}}}]}', "ids"),
        ("[]", "no answer"),
        ('{"router_data": 5}', "'router_data' must be a list"),
        ('{"router_data": [], "router_data": []}', "appears twice"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_fingerprint_structure_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "f.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        mf.load_trace(path, format="fingerprint")
    assert str(path) in str(info.value)


# Finding 5: errors of other types.


def test_a_corrupt_npz_stream_is_a_value_error(tmp_path):
    path = tmp_path / "t.npz"
    mf.synthetic_trace(500, 8, 2, 2, seed=0).save(path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("topk.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 10, start + info.compress_size - 10, 7):  # inside the deflate data
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"t\.npz"):
        mf.load_trace(path)


@pytest.mark.parametrize(
    "header",
    [
        b"{'descr': '<i8', 'fortran_order': False, 'shape': (3,), ",  # cut off
        b"{'descr': '<i8', 'fortran_order': False, 'shape': (10**30,), }",
        b"{'descr': '<i8', 'fortran_order': False, 'shape': (100000000000,), }",
        b"{'descr': 'O', 'fortran_order': False, 'shape': (3,), }",
        b"{'descr': '<i8', 'fortran_order': False, 'shape': ((((((,), }",
    ],
)
def test_a_malformed_npy_header_is_a_value_error(tmp_path, header):
    """tokenize.TokenError, EOFError and OverflowError escaped; a header claiming 10^11
    values must not allocate them."""
    header = header + b" " * (-(len(header) + 11) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(24)
    path = tmp_path / "load.npy"
    path.write_bytes(body)
    with pytest.raises(ValueError, match=r"load\.npy"):
        mf.load_expert_load(path)
    npz = tmp_path / "t.npz"
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("topk.npy", body)
        archive.writestr("num_experts.npy", body)
    with pytest.raises(ValueError, match=r"t\.npz"):
        mf.load_trace(npz)


@pytest.mark.parametrize(
    "text",
    ["[" * 50_000 + "]" * 50_000, "{" + '"a": {' * 50_000 + "}" * 50_001, "- " * 50_000 + "x"],
)
def test_deeply_nested_placement_files_are_a_value_error(tmp_path, text):
    path = tmp_path / ("p.yaml" if text.startswith("-") else "p.json")
    path.write_text(text)
    with pytest.raises(ValueError, match=str(path.name)):
        load_placement(path, num_gpus=2)


@pytest.mark.parametrize(
    "fmt, field, value",
    [
        ("json", "num_gpus", "1e400"),
        ("json", "slots_per_gpu", "-1e400"),
        ("eplb", "num_gpus", "1e400"),
        ("trtllm", "num_slots", ".inf"),
    ],
)
def test_infinite_numeric_fields_are_a_value_error(tmp_path, fmt, field, value):
    path, data = saved(tmp_path, fmt)
    data[field] = "@@"
    text = (yaml.safe_dump(data) if fmt == "trtllm" else json.dumps(data)).replace("'@@'", value)
    path.write_text(text.replace('"@@"', value))
    with pytest.raises(ValueError, match=field) as info:
        load_placement(path, num_gpus=2)
    assert str(path) in str(info.value)


def _no_planning(*args, **kwargs):
    raise AssertionError("planned before checking the output paths")


@pytest.mark.parametrize("flag", ["--out", "--report"])
def test_cli_output_paths_are_checked_before_the_work(tmp_path, monkeypatch, capsys, flag):
    """--out naming a folder (IsADirectoryError) and --report naming a file
    (FileExistsError) failed only after the whole plan was computed."""
    monkeypatch.setattr("moefast.cli.output.plan_trace", _no_planning)
    folder, file = tmp_path / "folder", tmp_path / "file"
    folder.mkdir()
    file.write_text("x")
    out, report = (folder, None) if flag == "--out" else (tmp_path / "p.json", file)
    argv = ["plan", str(GPTOSS20B_DECODE), "--gpus", "4", "--slots", "10", "--out", str(out)]
    if report is not None:
        argv += ["--report", str(report)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and flag in err


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("initial_global_assignments: [\n  1, 2\n")  # YAML errors span lines
    assert main(["evaluate", str(GPTOSS20B_DECODE), str(path), "--gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


# Finding 6: silent truncation.


@pytest.mark.parametrize(
    "fmt, edit",
    [
        ("json", lambda d: d.update(num_gpus=1.9)),
        ("json", lambda d: d.update(slots_per_gpu=True)),
        ("json", lambda d: d.update(slots_per_gpu=1e30)),
        ("json", lambda d: d.update(layer_ids=[2.7, 3])),
        ("eplb", lambda d: d.update(num_gpus="2")),
        ("eplb", lambda d: d.update(num_gpus=2.5)),
        ("trtllm", lambda d: d.update(initial_global_assignments={True: [0, 1, 2, 3, 4, 5, 2, 5]})),
        (
            "trtllm",
            lambda d: d["initial_global_assignments"].update({"00": [0, 1, 2, 3, 4, 5, 2, 5]}),
        ),
        ("sglang", lambda d: d["physical_to_logical_map"][0].__setitem__(0, 1.0)),
    ],
)
def test_placement_fields_are_refused_not_truncated(tmp_path, fmt, edit):
    path, data = saved(tmp_path, fmt)
    edit(data)
    rewrite(path, data)
    with pytest.raises(ValueError) as info:
        load_placement(path, num_gpus=2)
    assert str(path) in str(info.value)


def test_npz_layer_ids_are_refused_not_truncated(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, topk=np.array([[[0, 1]]]), num_experts=np.int64(2), layer_ids=np.array([1.7]))
    with pytest.raises(ValueError, match="layer_ids"):
        mf.load_trace(path)


# Finding 7: messages.


def test_non_utf8_jsonl_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"layer": 0, "experts": [0, 1], "token_idx": 0}\n{"layer": \xff}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl, line 2: not UTF-8"):
        mf.load_trace(path)


def test_reader_options_are_checked(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"layer": 0, "experts": [0, 1], "token_idx": 0}\n')
    with pytest.raises(TypeError, match="num_experts must be an int"):
        mf.load_trace(path, num_experts="10")


def test_a_uint64_weight_is_a_weight_not_an_id():
    weights = np.array([2**64 - 1, 1], dtype=np.uint64)
    table = mf.SubsetTable.from_topk(np.array([[0, 1], [1, 2]]), 3, weights)
    assert table.total_weight == pytest.approx(2.0**64)


def test_milp_on_zero_weights_is_a_clean_value_error():
    """pytest turns warnings into errors here: the RuntimeWarning of 0/0 fails the test."""
    table = mf.SubsetTable.from_subsets(np.array([[0, 1], [1, 2]]), np.zeros(2), 4)
    with pytest.raises(ValueError, match="empty"):
        mf.optimize(table, 2, 2, method="milp")


# Finding 8: empty traces.


def test_an_empty_trace_is_refused(tmp_path, capsys):
    path = tmp_path / "t.npz"
    np.savez(path, topk=np.zeros((0, 1, 2), dtype=np.int64), num_experts=np.int64(4))
    with pytest.raises(ValueError, match="0 tokens"):
        mf.load_trace(path)
    assert main(["inspect", str(path)]) == 2
    assert "nan" not in capsys.readouterr().out


def test_an_empty_table_weighs_plus_zero():
    table = mf.SubsetTable.from_topk(np.zeros((0, 2), dtype=np.int64), 3)
    assert table.total_weight == 0 and math.copysign(1.0, table.total_weight) == 1.0
    assert "total_weight=0," in repr(table)


# Finding 9.


def test_cli_counts_below_their_minimum_are_refused(tmp_path, capsys):
    base = ["plan", str(GPTOSS20B_DECODE), "--gpus", "4", "--slots", "10"]
    for argv in (
        [*base, "--out", str(tmp_path / "p.json"), "--batch-size", "0"],
        ["inspect", str(GPTOSS20B_DECODE), "--pairs", "-1"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "must be at least" in capsys.readouterr().err


def test_jsonl_request_ids_of_different_types_are_different_requests(tmp_path):
    path = tmp_path / "t.jsonl"
    records = [
        {"request_id": rid, "layer": 0, "experts": [0, 1], "token_idx": 0}
        for rid in (1, "1", None, "None")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert mf.load_trace(path).num_tokens == 4


def test_native_json_is_never_written_with_nan(tmp_path):
    model = small_model()
    model.layer_costs[0] = np.nan
    path = tmp_path / "p.json"
    with pytest.raises(ValueError, match="NaN"):
        model.save(path, "json")
    assert not path.exists()


# Finding 11: saves are atomic.

FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    import moefast as mf
    from moefast.placement import ModelPlacement
    kind, path = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        if kind == "trace":
            mf.synthetic_trace(20_000, 16, 2, 2, seed=1).save(path)
        else:
            p = mf.Placement.from_lists([[g % 8] for g in range(64)], 8)
            ModelPlacement([p] * 40, 8).save(path, kind, num_layers=40, moe_layers=range(40))
    except OSError as err:
        print("OSError", err.errno)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE")
@pytest.mark.parametrize("kind", ["trace", "json", "sglang", "trtllm"])
def test_a_save_that_fails_midway_leaves_the_old_file(tmp_path, kind):
    """write_text and Trace.save truncated the target first: a full disk (here a file
    size limit) left a partial file."""
    path = tmp_path / {"trace": "t.npz", "trtllm": "p.yaml"}.get(kind, "p.json")
    old = b"the previous, complete content\n"
    path.write_bytes(old)
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, kind, str(path)], capture_output=True, text=True
    )
    assert done.stdout.startswith("OSError"), done.stderr[-2000:]
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_an_interrupted_trace_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.npz"
    trace = mf.synthetic_trace(100, 8, 2, 2, seed=0)
    trace.save(path)
    old = path.read_bytes()

    def interrupted(file, **arrays):
        file.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mf.synthetic_trace(200, 8, 2, 2, seed=1).save(path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]


def raw_folder(tmp_path, tensors: dict, raw: bool = True):
    """A TensorRT-LLM statistics folder with one rank file of these tensors."""
    safetensors = pytest.importorskip("safetensors.numpy")
    folder = tmp_path / "stats"
    folder.mkdir(exist_ok=True)
    (folder / "meta_info.json").write_text('{"num_experts": 8, "num_experts_per_token": 2}')
    name = "rank0_raw.safetensors" if raw else "rank0.safetensors"
    safetensors.save_file(tensors, str(folder / name))
    return folder


def test_trtllm_raw_keys_must_match_whole(tmp_path):
    from moefast.io.streaming import iter_trace

    ids = np.array([[0, 1], [2, 3]], dtype=np.int32)
    folder = raw_folder(tmp_path, {"0_1": ids, "0_1junk": ids + 4})
    with pytest.raises(ValueError, match="'0_1junk' is not '<iter>_<layer>'"):
        mf.load_trace(folder)
    with pytest.raises(ValueError, match="'0_1junk' is not"):
        list(iter_trace(folder))


@pytest.mark.parametrize("raw", [True, False])
def test_trtllm_keys_naming_one_iteration_and_layer_twice_are_refused(tmp_path, raw):
    # "0_1" and "0_01" both mean iteration 0, layer 1: one block was dropped (raw) or
    # summed twice (counts).
    value = np.array([[0, 1]], dtype=np.int32) if raw else np.arange(8, dtype=np.int64)
    keys = ("0_1", "0_01") if raw else ("0_1", "00_1")
    folder = raw_folder(tmp_path, dict.fromkeys(keys, value), raw)
    read = mf.load_trace if raw else mf.load_expert_load
    with pytest.raises(ValueError, match="both name iteration 0, layer 1"):
        read(folder)


def test_trtllm_raw_layers_and_ids_out_of_range_are_reported_as_written(tmp_path):
    from moefast.io.streaming import iter_trace

    ids = np.array([[0, 1]], dtype=np.int32)
    folder = raw_folder(tmp_path, {"0_1234567890": ids})
    with pytest.raises(ValueError, match="'0_1234567890' is not"):
        mf.load_trace(folder)
    huge = np.array([[2**63, 1]], dtype=np.uint64)
    folder = raw_folder(tmp_path, {"0_1": huge})
    for read in (mf.load_trace, lambda p: list(iter_trace(p))):
        with pytest.raises(ValueError, match="expert id 9223372036854775808 out of range"):
            read(folder)


def test_sglang_dump_with_a_map_of_no_slots_is_a_value_error():
    from moefast.io.readers.sglang import trace_from_sglang_per_token

    dump = {
        "records": [{"forward_pass_id": 0, "topk_ids_of_layer": np.full((2, 3, 2), -1)}],
        "last_physical_to_logical_map": np.zeros((2, 0), dtype=np.int64),
    }
    with pytest.raises(ValueError, match="has no slots"):
        trace_from_sglang_per_token([dump])


def test_an_sglang_map_listing_an_expert_twice_on_a_gpu_is_kept_slot_for_slot(tmp_path):
    path, data = saved(tmp_path, "sglang")
    row = data["physical_to_logical_map"][0]
    if row.count(row[1]) == 1:  # the second slot's expert must keep another slot
        row[1], row[2] = row[2], row[1]
    row[1] = row[0]  # GPU 0 lists its first expert twice (SGLang loads it so)
    rewrite(path, data)
    loaded = load_placement(path, num_gpus=G)
    assert loaded.slots is not None and loaded.slots[0].tolist() == row
    assert loaded.repeated_slots[0] == 1


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("version", 2, "version 2"), ("version", True, "version True"), ("num_experts", 7, "7")],
)
def test_native_files_of_another_version_or_expert_count_are_refused(tmp_path, field, value, match):
    path, data = saved(tmp_path, "json")
    data[field] = value
    rewrite(path, data)
    with pytest.raises(ValueError, match=match):
        load_placement(path)
    data[field] = 1 if field == "version" else E
    rewrite(path, data)
    assert load_placement(path).num_experts == E
