"""Placement files: round trips through every format, engine-map consistency, bad files."""

from __future__ import annotations

import json

import moefast
import numpy as np
import pytest
import yaml
from moefast.io.engines import PLACEMENT_FORMATS, gpu_slots, load_placement
from moefast.io.layouts import model_layout
from moefast.placement import ModelPlacement

E, G, SLOTS = 10, 4, 4
#: A model of 7 decoder layers whose MoE layers are 3, 4 and 6 (0-2 and 5 dense).
LAYOUT = {"num_layers": 7, "moe_layers": [3, 4, 6]}


def full_placement(seed: int) -> moefast.Placement:
    """Every expert at least once, every GPU's slots all used, no expert twice on a GPU."""
    rng = np.random.default_rng(seed)
    replicas = np.zeros((E, G), dtype=bool)
    for e, g in enumerate(rng.permutation(E)):
        replicas[e, g % G] = True
    for g in range(G):
        free = SLOTS - replicas[:, g].sum()
        candidates = np.flatnonzero(~replicas[:, g])
        replicas[rng.choice(candidates, free, replace=False), g] = True
    return moefast.Placement(replicas)


def model(layer_ids=(3, 4, 6)) -> ModelPlacement:
    return ModelPlacement(
        [full_placement(i) for i in range(len(layer_ids))],
        SLOTS,
        list(layer_ids),
        layer_costs=[1.5, 1.25, 2.0][: len(layer_ids)],
        lower_bounds=[1.0] * len(layer_ids),
        settings={"method": "greedy", "coverage": 0.99},
    )


@pytest.mark.parametrize("fmt", PLACEMENT_FORMATS)
def test_round_trip_gives_back_the_replica_sets(tmp_path, fmt):
    original = model()
    path = tmp_path / ("p.yaml" if fmt == "trtllm" else "p.json")
    original.save(path, fmt, **LAYOUT)
    if fmt == "vllm-ascend":  # read by position, as the engine does: the layout names them
        back = load_placement(path, model=model_layout(**LAYOUT))
    else:
        back = load_placement(path, num_gpus=G, layer_ids=[3, 4, 6])
    assert back.layer_ids == original.layer_ids
    assert back.num_gpus == G and back.slots_per_gpu == SLOTS
    np.testing.assert_array_equal(back.replicas(), original.replicas())


def test_native_json_keeps_costs_and_settings(tmp_path):
    original = model()
    original.save(tmp_path / "p.json")
    back = ModelPlacement.load(tmp_path / "p.json")
    np.testing.assert_allclose(back.layer_costs, original.layer_costs)
    np.testing.assert_allclose(back.lower_bounds, original.lower_bounds)
    assert back.settings == original.settings
    assert json.loads((tmp_path / "p.json").read_text())["expected_cost"] == pytest.approx(4.75)


def test_sglang_map_puts_each_slot_on_its_gpu(tmp_path):
    original = model()
    path = tmp_path / "sglang.json"
    original.save(path, "sglang", **LAYOUT)
    data = json.loads(path.read_text())
    assert list(data) == ["physical_to_logical_map"]  # SGLang passes every key to its loader
    p2l = np.array(data["physical_to_logical_map"])
    assert p2l.shape == (7, G * SLOTS)  # model layers 0..6, dense ones included
    for layer, placement in zip(original.layer_ids, original.placements, strict=True):
        for p, expert in enumerate(p2l[layer]):
            assert placement.replicas[expert, p // SLOTS], f"layer {layer} slot {p}"
        # and every replica has a slot
        held = {(int(e), p // SLOTS) for p, e in enumerate(p2l[layer])}
        assert held == {(e, g) for e, g in zip(*np.nonzero(placement.replicas), strict=True)}
    for dense in (0, 1, 2, 5):
        assert set(p2l[dense]) == set(range(E))


def test_sglang_num_layers_pads_after_the_last_moe_layer(tmp_path):
    model().save(tmp_path / "s.json", "sglang", num_layers=9, moe_layers=[3, 4, 6])
    p2l = json.loads((tmp_path / "s.json").read_text())["physical_to_logical_map"]
    assert len(p2l) == 9
    with pytest.raises(ValueError, match="do not fit num_layers = 5"):
        model().save(tmp_path / "s.json", "sglang", num_layers=5, moe_layers=[3, 4, 6])


def test_eplb_arrays_agree(tmp_path):
    original = model()
    original.save(tmp_path / "e.json", "eplb")
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["layer_ids"] == [3, 4, 6]
    phy2log, log2phy, logcnt = (np.array(data[k]) for k in ("phy2log", "log2phy", "logcnt"))
    assert phy2log.shape == (3, G * SLOTS)
    assert log2phy.shape == (3, E, logcnt.max())
    np.testing.assert_array_equal(logcnt, original.replicas().sum(axis=2))
    for layer in range(3):
        for e in range(E):
            slots = log2phy[layer, e, : logcnt[layer, e]]
            assert (log2phy[layer, e, logcnt[layer, e] :] == -1).all()
            assert (phy2log[layer, slots] == e).all()


def test_trtllm_yaml_is_static(tmp_path):
    model().save(tmp_path / "t.yaml", "trtllm", **LAYOUT)
    data = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert data["num_slots"] == G * SLOTS and data["layer_updates_per_iter"] == 0
    assert sorted(data["initial_global_assignments"]) == [3, 4, 6]
    assert all(len(v) == G * SLOTS for v in data["initial_global_assignments"].values())


def test_vllm_ascend_lists_each_device(tmp_path):
    original = model()
    original.save(tmp_path / "a.json", "vllm-ascend", **LAYOUT)
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["moe_layer_count"] == 3
    layer = data["layer_list"][1]
    assert layer["device_count"] == G
    for g, device in enumerate(layer["device_list"]):
        assert set(device["device_expert"]) == set(np.flatnonzero(original[1].replicas[:, g]))


def test_free_slots_are_refused_or_filled_never_repeated(tmp_path):
    # A free slot used to be padded with a repeat of an expert of the
    # same GPU, which vLLM-Ascend and DeepSeek's scatter route to the wrong expert.
    replicas = np.zeros((E, G), dtype=bool)
    replicas[np.arange(E), np.arange(E) % G] = True  # 3, 3, 2, 2 experts: free slots remain
    mp = ModelPlacement([moefast.Placement(replicas)], SLOTS, [3])
    for fmt in PLACEMENT_FORMATS:
        if fmt == "json":
            continue
        path = tmp_path / f"{fmt}.{'yaml' if fmt == 'trtllm' else 'json'}"
        with pytest.raises(ValueError, match="GPU 0 holds 3 distinct experts for 4 slots"):
            mp.save(path, fmt, **LAYOUT)
        assert not path.exists()
    load = np.arange(E, 0, -1, dtype=float)[None, :]  # expert 0 heaviest
    filled = mp.filled(load)
    assert (filled[0].slots_used == SLOTS).all()
    assert (filled.replicas() >= mp.replicas()).all()  # only additions
    slots = gpu_slots(filled[0], SLOTS)
    assert all(len(set(row)) == SLOTS for row in slots.tolist())
    # GPUs 0 and 1 took experts 1 and 0 (load per replica 9 and 10); GPU 2 then takes the
    # highest load per replica it lacks: 3 (7) and 4 (6), ahead of 0 (10 / 2) and 1 (9 / 2).
    assert sorted(slots[2].tolist()) == [2, 3, 4, 6]


def test_formats_without_gpu_count_ask_for_it(tmp_path):
    model().save(tmp_path / "s.json", "sglang", **LAYOUT)
    with pytest.raises(ValueError, match="num_gpus"):
        load_placement(tmp_path / "s.json")


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"physical_to_logical_map": [[0, 1, 2]]}', "cannot be split"),
        ('{"physical_to_logical_map": [[0, 1, 1, 0]]}', "out of range|has no slot"),
        ('{"physical_to_logical_map": [[0, "a", 1, 2]]}', "not a list of integers"),
        ('{"something": 1}', "not a placement file"),
        ('{"format": "moefast-placement", "num_gpus": 2}', "missing key"),
        ('{"physical_to_logical_map": [[0, 1,\n 2, 3]', "line 2"),
        # Read as int64 these were truncated to experts 1 and 1, 0 (or an OverflowError).
        ('{"physical_to_logical_map": [[0, 1.5, 2, 1]]}', "not a list of integers"),
        ('{"physical_to_logical_map": [[true, false, true, false]]}', "not a list of integers"),
        (
            '{"physical_to_logical_map": [[0, 100000000000000000000000, 2, 1]]}',
            "not a list of integers",
        ),
        ('{"physical_to_logical_map": [[]]}', "map is empty"),
    ],
)
def test_malformed_placement_files(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_placement(path, num_gpus=2, num_experts=3)
    assert str(path) in str(info.value)


def test_eplb_logcnt_must_agree(tmp_path):
    model().save(tmp_path / "e.json", "eplb")
    data = json.loads((tmp_path / "e.json").read_text())
    data["logcnt"][0][0] += 1
    (tmp_path / "e.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="logcnt disagrees"):
        load_placement(tmp_path / "e.json")


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("num_slots: 4\ninitial_global_assignments: {3: [0, 1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml, line"):
        load_placement(path, num_gpus=2)


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown placement format"):
        model().save(tmp_path / "x.json", "onnx")


def test_numpy_settings_stay_numbers(tmp_path):
    mp = model()
    mp.settings = {"coverage": np.float64(0.99), "seeds": np.arange(2)}
    mp.save(tmp_path / "p.json")
    assert load_placement(tmp_path / "p.json").settings == {"coverage": 0.99, "seeds": [0, 1]}


def test_trtllm_yaml_under_any_name(tmp_path):
    original = model()
    original.save(tmp_path / "eplb_config.txt", "trtllm", **LAYOUT)
    back = load_placement(tmp_path / "eplb_config.txt", num_gpus=G)
    np.testing.assert_array_equal(back.replicas(), original.replicas())


def test_binary_file_as_placement_names_the_file(tmp_path):
    path = tmp_path / "trace.npz"
    path.write_bytes(b"PK\x03\x04\xb6\xff\x00")
    with pytest.raises(ValueError, match="not UTF-8 text") as info:
        load_placement(path)
    assert str(path) in str(info.value)
