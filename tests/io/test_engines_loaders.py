"""Engine files checked the way the engines load them (tests/support/engine_loaders.py), and engine
recordings built the way the engines write them (tests/support/engine_writers.py). The
findings 1-4 each have a test here that fails on the code before the fix."""

from __future__ import annotations

import json
import pickle

import moefast
import moefast.io.readers.sglang as sglang_reader
import numpy as np
import pytest
import yaml
from moefast._core import fill_free_slots
from moefast.cli.evaluate import print_repeats
from moefast.eplb import rebalance_experts
from moefast.io.engines import default_map
from moefast.io.layouts import ModelLayout, get_model, map_positions
from moefast.io.readers.sglang import (
    expert_load_from_sglang_per_pass,
    trace_from_sglang_per_token,
)
from moefast.io.readers.trtllm import expert_load_from_trtllm, trace_from_trtllm_raw
from moefast.placement import ModelPlacement
from support.engine_loaders import (
    ascend_eplb_config,
    deepseek_eplb_check,
    sglang_load,
    trtllm_load,
    vllm_ascend_load,
)
from support.engine_writers import (
    sglang_dp_same_prompt_dumps,
    sglang_per_pass_dumps,
    sglang_per_token_dumps,
    trtllm_statistics_folder,
)
from support.shared_data import DEEPSEEK_DECODE_LOAD

#: Dense layers first (0, 1) and last (7), MoE layers 2-6, an MTP layer after them (8).
LAYOUT = ModelLayout("test-moe", 8, (2, 3, 4, 5, 6), 64, 4, None, (8,))
E = 64


def random_model(num_gpus: int, layer_ids, seed: int = 0) -> ModelPlacement:
    """Full GPUs: round robin plus replicas by a random load, distinct experts per GPU."""
    rng = np.random.default_rng(seed)
    slots = E // num_gpus + 1
    placements = []
    for _ in layer_ids:
        replicas = np.zeros((E, num_gpus), dtype=bool)
        replicas[rng.permutation(E), np.arange(E) % num_gpus] = True
        placements.append(fill_free_slots(moefast.Placement(replicas), slots, rng.random(E)))
    return ModelPlacement(placements, slots, list(layer_ids))


def rank_sets(placement: moefast.Placement) -> list[set[int]]:
    return [
        set(np.flatnonzero(placement.replicas[:, g]).tolist()) for g in range(placement.num_gpus)
    ]


def check_ranks(loaded: list[list[int]], placement: moefast.Placement, slots: int) -> None:
    assert all(len(row) == slots and len(set(row)) == slots for row in loaded)
    assert [set(row) for row in loaded] == rank_sets(placement)


@pytest.mark.parametrize("num_gpus", [2, 4, 8, 32])
def test_every_engine_loads_every_rank_with_moefasts_replica_sets(tmp_path, num_gpus):
    moe = [2, 3, 4, 5, 6]
    model = random_model(num_gpus, [*moe, 8], seed=num_gpus)  # with the MTP layer
    placements = dict(zip(model.layer_ids, model.placements, strict=True))
    slots, total = model.slots_per_gpu, model.slots_per_gpu * num_gpus
    default = default_map(total, E).reshape(num_gpus, slots).tolist()

    launch = model.save(tmp_path / "s.json", "sglang", model=LAYOUT)
    assert f"--ep-size {num_gpus} --ep-num-redundant-experts {total - E}" in launch["command_line"]
    rows = sglang_load(
        tmp_path / "s.json",
        ep_size=num_gpus,
        num_experts=E,
        num_redundant=total - E,
        num_hidden_layers=8,
    )
    for layer in moe:
        check_ranks(rows[layer], placements[layer], slots)
    check_ranks(rows[0], placements[8], slots)  # the NextN draft layer is decoder layer 0
    assert rows[1] == default and rows[7] == default  # dense rows: the default map

    launch = model.save(tmp_path / "t.yaml", "trtllm", model=LAYOUT)
    assert (launch["moe_expert_parallel_size"], launch["num_slots"]) == (num_gpus, total)
    ranks = trtllm_load(
        tmp_path / "t.yaml", ep_size=num_gpus, layer_indices=[*moe, 8], num_experts=E
    )
    for layer in [*moe, 8]:
        check_ranks(ranks[layer], placements[layer], slots)
    with pytest.raises(AssertionError, match="KeyError"):  # a dense layer has no key
        trtllm_load(tmp_path / "t.yaml", ep_size=num_gpus, layer_indices=[1], num_experts=E)

    launch = model.save(tmp_path / "a.json", "vllm-ascend", model=LAYOUT)
    assert launch["num_redundant_experts"] == total - E
    positions = vllm_ascend_load(
        tmp_path / "a.json", num_moe_layers=6, num_experts=E, ep_size=num_gpus
    )
    for position, layer in enumerate([*moe, 8]):  # the MTP layer is counted after the MoE layers
        check_ranks(positions[position], placements[layer], slots)

    model.save(tmp_path / "e.json", "eplb", model=LAYOUT)
    phy2log = deepseek_eplb_check(tmp_path / "e.json", E)
    for row, layer in zip(phy2log, [*moe, 8], strict=True):
        check_ranks(row.reshape(num_gpus, slots).tolist(), placements[layer], slots)


def test_mtp_rows_when_asked_planned_or_by_default_in_trtllm(tmp_path):
    model = random_model(4, [2, 3, 4, 5, 6])
    model.save(tmp_path / "t.yaml", "trtllm", model=LAYOUT, mtp=False)
    assert sorted(
        yaml.safe_load((tmp_path / "t.yaml").read_text())["initial_global_assignments"]
    ) == [2, 3, 4, 5, 6]
    model.save(tmp_path / "d.yaml", "trtllm", model=LAYOUT)  # the engine's MTP row, no warning
    assert sorted(
        yaml.safe_load((tmp_path / "d.yaml").read_text())["initial_global_assignments"]
    ) == [2, 3, 4, 5, 6, 8]
    with pytest.warns(UserWarning, match=r"layers \[8\] of test-moe have no placement"):
        model.save(tmp_path / "m.yaml", "trtllm", model=LAYOUT, mtp=True)
    ranks = trtllm_load(tmp_path / "m.yaml", ep_size=4, layer_indices=[8], num_experts=E)
    assert [sorted(r) for r in ranks[8]] == [
        sorted(r) for r in default_map(68, E).reshape(4, 17).tolist()
    ]


# ---- finding 3: layer numbering ----------------------------------------------------------


def test_positions_are_refused_with_a_mapping_hint_and_map_positions_fixes_them(tmp_path):
    trace = moefast.synthetic_trace(400, 256, 8, 58, seed=1)  # layer ids 0..57: positions
    assert trace.layer_ids == list(range(58))
    placements = moefast.plan(trace, 32, 9, method="round_robin", progress=False)
    for fmt in ("sglang", "trtllm", "vllm-ascend", "eplb"):
        with pytest.raises(ValueError, match=r"not MoE layers of deepseek-v3.*map_positions"):
            placements.save(
                tmp_path / f"x.{'yaml' if fmt == 'trtllm' else 'json'}", fmt, model="deepseek-v3"
            )
    mapped = map_positions(trace, "deepseek-v3")
    assert mapped.layer_ids == list(range(3, 61))
    planned = moefast.plan(mapped, 32, 9, method="round_robin", progress=False)
    planned.save(tmp_path / "s.json", "sglang", model="deepseek-v3")
    rows = json.loads((tmp_path / "s.json").read_text())["physical_to_logical_map"]
    assert len(rows) == 61
    # Row 3 (the first MoE layer) holds what was planned for position 0; rows 0-2 are dense.
    assert [set(rows[3][g * 9 : (g + 1) * 9]) for g in range(32)] == rank_sets(planned[0])
    assert rows[1] == default_map(288, 256).tolist()


def test_engine_formats_need_the_model_layout(tmp_path):
    model = random_model(4, [0, 1])
    for fmt in ("sglang", "trtllm", "vllm-ascend"):
        with pytest.raises(ValueError, match="say which model"):
            model.save(tmp_path / f"x.{'yaml' if fmt == 'trtllm' else 'json'}", fmt)
    with pytest.raises(ValueError, match=r"loads only \.json"):
        model.save(tmp_path / "x.txt", "sglang", model=LAYOUT)
    with pytest.raises(ValueError, match=r"loads only \.json"):
        model.save(tmp_path / "x.yaml", "vllm-ascend", model=LAYOUT)


def test_model_presets_match_their_configs():
    v3 = get_model("deepseek-v3")
    assert (v3.num_layers, v3.moe_layers[0], v3.moe_layers[-1], len(v3.moe_layers)) == (
        61,
        3,
        60,
        58,
    )
    assert (v3.num_experts, v3.k, v3.num_groups, v3.mtp_layers) == (256, 8, 8, (61,))
    assert get_model("DeepSeek_V2_Lite").moe_layers == tuple(range(1, 27))
    assert get_model("mixtral").moe_layers == tuple(range(32))
    assert (get_model("dbrx").num_experts, get_model("dbrx").k) == (16, 4)
    assert (get_model("gpt-oss").num_layers, get_model("gpt-oss").num_experts) == (24, 32)
    with pytest.raises(ValueError, match="unknown model 'llama'"):
        get_model("llama")


# ---- finding 4: free slots -----------------------------------------------------------------


def test_vllm_ascend_transcription_catches_a_repeated_expert(tmp_path):
    # The file the old writer made for a GPU with a free slot: expert 0 repeated on rank 0.
    data = {
        "moe_layer_count": 1,
        "layer_list": [
            {
                "layer_id": 0,
                "device_count": 2,
                "device_list": [
                    {"device_id": 0, "device_expert": [0, 1, 0]},
                    {"device_id": 1, "device_expert": [2, 3, 1]},
                ],
            }
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="rank 0 has 2 local experts for 3"):
        vllm_ascend_load(tmp_path / "a.json", num_moe_layers=1, num_experts=4, ep_size=2)


# ---- the numbers on DeepSeek-V3 ----------------------------------------------------


@pytest.mark.skipif(not DEEPSEEK_DECODE_LOAD.exists(), reason="needs ../shared/data")
def test_deepseek_v3_statistics_files_load_in_every_engine(tmp_path):
    counts = np.array(json.loads(DEEPSEEK_DECODE_LOAD.read_text())["logical_count"])
    tables = [
        moefast.SubsetTable.from_subsets(np.arange(256)[:, None], counts[layer], 256)
        for layer in range(3, 61)
    ]
    placements = [moefast.optimize(t, 32, 9, method="eplb") for t in tables]
    model = ModelPlacement(placements, 9, list(range(3, 61)))
    model.save(tmp_path / "s.json", "sglang", model="deepseek-v3")
    model.save(tmp_path / "t.yaml", "trtllm", model="deepseek-v3")
    model.save(tmp_path / "a.json", "vllm-ascend", model="deepseek-v3")
    rows = sglang_load(
        tmp_path / "s.json", ep_size=32, num_experts=256, num_redundant=32, num_hidden_layers=61
    )
    assert np.asarray(
        json.loads((tmp_path / "s.json").read_text())["physical_to_logical_map"]
    ).shape == (61, 288)
    data = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert list(data["initial_global_assignments"]) == list(range(3, 62))  # MTP layer 61 too
    ranks = trtllm_load(
        tmp_path / "t.yaml", ep_size=32, layer_indices=list(range(3, 61)), num_experts=256
    )
    assert json.loads((tmp_path / "a.json").read_text())["moe_layer_count"] == 58
    positions = vllm_ascend_load(
        tmp_path / "a.json", num_moe_layers=58, num_experts=256, ep_size=32
    )
    for position, placement in enumerate(placements):
        layer = position + 3
        check_ranks(rows[layer], placement, 9)
        check_ranks(ranks[layer], placement, 9)
        check_ranks(positions[position], placement, 9)


# ---- finding 1: SGLang per_token dumps ----------------------------------------------------


def sglang_map(rng, num_hidden_layers: int, num_experts: int, num_slots: int) -> np.ndarray:
    """A physical-to-logical map per layer: every expert once, then random replicas."""
    rows = []
    for _ in range(num_hidden_layers):
        extra = rng.choice(num_experts, num_slots - num_experts, replace=False)
        rows.append(rng.permutation(np.concatenate([np.arange(num_experts), extra])))
    return np.stack(rows)


@pytest.mark.parametrize("k", [2, 4, 6, 8])
@pytest.mark.parametrize("dp_ranks, tp_twins", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_sglang_per_token_dumps_of_any_k(k, dp_ranks, tp_twins):
    rng = np.random.default_rng(k)
    num_experts, moe_layers, num_hidden_layers = 16, [1, 2, 4], 6  # dense 0, 3, 5
    topk = np.stack(
        [np.stack([rng.choice(num_experts, k, replace=False) for _ in range(3)]) for _ in range(40)]
    )
    p2l = sglang_map(rng, num_hidden_layers, num_experts, 20)
    dumps = sglang_per_token_dumps(
        topk, moe_layers, num_hidden_layers, p2l, dp_ranks=dp_ranks, tp_twins=tp_twins
    )
    assert dumps[0]["records"][0]["topk_ids_of_layer"].shape[2] == 8
    trace = trace_from_sglang_per_token(dumps)
    assert trace.layer_ids == moe_layers and trace.k == k and trace.num_experts == num_experts
    # Same tokens (TP twins kept once), in pass order then DP-rank order.
    order = np.concatenate(
        [np.concatenate(np.array_split(p, dp_ranks)) for p in np.array_split(np.arange(40), 2)]
    )
    np.testing.assert_array_equal(trace.topk, topk[order])


# ---- finding 2: TensorRT-LLM statistics folders ------------------------------------------


def small_topk(rng, tokens=30, layers=2, k=4, num_experts=16):
    return np.stack(
        [
            np.stack([rng.choice(num_experts, k, replace=False) for _ in range(layers)])
            for _ in range(tokens)
        ]
    )


def test_trtllm_raw_files_are_a_trace_and_not_counts(tmp_path):
    pytest.importorskip("safetensors")
    rng = np.random.default_rng(3)
    topk = small_topk(rng)  # 30 tokens: rank files hold 7-8 x 4 = 28-32 ids, E = 16
    trtllm_statistics_folder(tmp_path, topk, [3, 4], 16)
    load, layers = moefast.load_expert_load(tmp_path, return_layer_ids=True)
    assert layers == [3, 4]
    for position in range(2):
        np.testing.assert_array_equal(
            load[position], np.bincount(topk[:, position].ravel(), minlength=16)
        )
    trace = moefast.load_trace(tmp_path)
    assert trace.layer_ids == [3, 4]
    order = np.concatenate(
        [np.concatenate(np.array_split(c, 2)) for c in np.array_split(np.arange(30), 2)]
    )
    np.testing.assert_array_equal(trace.topk, topk[order])


def test_trtllm_raw_file_with_tokens_times_k_equal_to_experts(tmp_path):
    # 4 tokens x top-4 = 16 ids = E: the old glob read them as 16 counts, silently.
    pytest.importorskip("safetensors")
    topk = small_topk(np.random.default_rng(5), tokens=8)
    trtllm_statistics_folder(tmp_path, topk, [3, 4], 16, ranks=1)
    load = moefast.load_expert_load(tmp_path)
    np.testing.assert_array_equal(load[0], np.bincount(topk[:, 0].ravel(), minlength=16))


def test_trtllm_slot_counts_are_detected():
    rng = np.random.default_rng(1)
    ranks = [{"0_3": rng.integers(0, 5, 20)}]
    with pytest.raises(ValueError, match="load balancer on count physical slots"):
        expert_load_from_trtllm({"num_experts": 20}, ranks, num_experts=16)
    raw = [{"0_3": small_topk(rng, layers=1)[:, 0].astype(np.int32)}]
    with pytest.raises(ValueError, match="num_experts = 20 but the model has 16"):
        trace_from_trtllm_raw({"num_experts": 20}, raw, num_experts=16)
    assert trace_from_trtllm_raw({"num_experts": 16}, raw).num_experts == 16


def test_plan_with_a_model_refuses_early_and_save_uses_it(tmp_path):
    trace = moefast.synthetic_trace(300, 256, 8, 3, seed=2)  # layer ids 0, 1, 2: dense in V3
    with pytest.raises(ValueError, match="layer ids 0-2 are not MoE layers of deepseek-v3"):
        moefast.plan(trace, 32, 9, method="round_robin", model="deepseek-v3")
    mapped = map_positions(trace, "deepseek-v3")
    planned = moefast.plan(mapped, 32, 9, method="round_robin", model="deepseek-v3")
    assert planned.settings["model"] == "deepseek-v3"
    with pytest.warns(UserWarning, match=r"layers \[6, 7,"):
        planned.save(tmp_path / "t.yaml", "trtllm")  # the recorded model, no model= needed
    keys = yaml.safe_load((tmp_path / "t.yaml").read_text())["initial_global_assignments"]
    assert list(keys) == list(range(3, 62))  # with the MTP layer


def test_sglang_dp_attention_ranks_with_equal_records_are_kept_apart():
    rng = np.random.default_rng(5)
    moe_layers, num_hidden_layers = [1, 2], 3
    topk = small_topk(rng, tokens=4)
    p2l = sglang_map(rng, num_hidden_layers, 16, 20)
    dumps = sglang_dp_same_prompt_dumps(topk, moe_layers, num_hidden_layers, p2l)
    # Pass 0: the same 4 tokens on both ranks; pass 1: 2 tokens each.
    trace = trace_from_sglang_per_token(dumps)
    assert trace.num_tokens == 12
    np.testing.assert_array_equal(trace.topk, topk[[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]])
    assert trace_from_sglang_per_token(dumps, dp_attention=False).num_tokens == 8
    # One pass where both ranks agree: nothing in the dump tells DP ranks from TP twins.
    first = [{**d, "records": d["records"][:1]} for d in dumps]
    assert trace_from_sglang_per_token(first).num_tokens == 4
    assert trace_from_sglang_per_token(first, dp_attention=True).num_tokens == 8
    with pytest.raises(TypeError, match="dp_attention"):
        trace_from_sglang_per_token(first, dp_attention="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("dp_ranks, tp_twins", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_sglang_per_pass_dumps_are_loads(tmp_path, dp_ranks, tp_twins):
    rng = np.random.default_rng(dp_ranks + tp_twins)
    moe_layers, num_hidden_layers = [1, 2, 4], 6
    topk = small_topk(rng, tokens=40, layers=3)
    p2l = sglang_map(rng, num_hidden_layers, 16, 20)
    args = (topk, moe_layers, num_hidden_layers, p2l)
    dumps = sglang_per_pass_dumps(*args, dp_ranks=dp_ranks, tp_twins=tp_twins)
    load = expert_load_from_sglang_per_pass(dumps)
    want = np.zeros((num_hidden_layers, 16))
    for position, layer in enumerate(moe_layers):
        want[layer] = np.bincount(topk[:, position].ravel(), minlength=16)
    np.testing.assert_array_equal(load, want)
    # The per_token dumps of the same recording give the same loads.
    per_token = trace_from_sglang_per_token(
        sglang_per_token_dumps(*args, dp_ranks=dp_ranks, tp_twins=tp_twins)
    )
    np.testing.assert_array_equal(per_token.expert_load(), want[moe_layers])


def test_sglang_per_pass_files_read_as_loads_and_refused_as_traces(tmp_path, monkeypatch):
    # The dumps pickled, read back in place of torch.load (torch is optional).
    monkeypatch.setattr(sglang_reader, "_torch_load", lambda f: pickle.loads(f.read_bytes()))
    rng = np.random.default_rng(8)
    topk = small_topk(rng, tokens=10)
    p2l = sglang_map(rng, 3, 16, 16)
    for r, dump in enumerate(sglang_per_pass_dumps(topk, [1, 2], 3, p2l, tp_twins=2)):
        (tmp_path / f"expert_distribution_recorder_1.0_{r}.pt").write_bytes(pickle.dumps(dump))
    load, layers = moefast.load_expert_load(tmp_path, return_layer_ids=True)
    assert layers == [1, 2]
    np.testing.assert_array_equal(load[0], np.bincount(topk[:, 0].ravel(), minlength=16))
    with pytest.raises(ValueError, match=r"per_pass dump.*load_expert_load"):
        moefast.load_trace(tmp_path)


def test_trtllm_dispatch_dumps_are_read_and_checked(tmp_path):
    pytest.importorskip("safetensors")
    rng = np.random.default_rng(4)
    topk = small_topk(rng)
    trtllm_statistics_folder(tmp_path, topk, [3, 4], 16, ranks=2, dispatch=True)
    assert json.loads((tmp_path / "meta_info.json").read_text())["ep_size"] == 2
    load = moefast.load_expert_load(tmp_path)
    np.testing.assert_array_equal(load[0], np.bincount(topk[:, 0].ravel(), minlength=16))
    trace = moefast.load_trace(tmp_path)
    assert trace.num_tokens == 30
    # A token count that disagrees with the counts and ids.
    tokens = json.loads((tmp_path / "rank1_numtokens.json").read_text())
    tokens["0_3"] += 1
    (tmp_path / "rank1_numtokens.json").write_text(json.dumps(tokens))
    with pytest.raises(ValueError, match=r"rank1_numtokens\.json says"):
        moefast.load_expert_load(tmp_path)
    with pytest.raises(ValueError, match=r"rank1_numtokens\.json says"):
        moefast.load_trace(tmp_path)
    # A rank below ep_size without its files.
    (tmp_path / "rank1_numtokens.json").unlink()
    (tmp_path / "rank1.safetensors").unlink()
    (tmp_path / "rank1_raw.safetensors").unlink()
    with pytest.raises(ValueError, match=r"ep_size = 2, but the files of ranks \[1\] are missing"):
        moefast.load_expert_load(tmp_path)
    with pytest.raises(ValueError, match="ranks \\[1\\] are missing"):
        list(moefast.iter_trace(tmp_path))


# ---- slot maps as the engines hold them: repeats, MTP rows, launch settings ----------------


def repeats_by_brute_force(slots: np.ndarray, num_gpus: int) -> np.ndarray:
    per_gpu = slots.shape[1] // num_gpus
    return np.array(
        [
            sum(
                per_gpu - len(set(row[g * per_gpu : (g + 1) * per_gpu].tolist()))
                for g in range(num_gpus)
            )
            for row in slots
        ]
    )


@pytest.mark.skipif(not DEEPSEEK_DECODE_LOAD.exists(), reason="needs ../shared/data")
def test_an_eplb_map_with_repeats_round_trips_slot_for_slot(tmp_path, capsys):
    counts = np.array(json.loads(DEEPSEEK_DECODE_LOAD.read_text())["logical_count"])
    phy2log, _, _ = rebalance_experts(counts[3:61], 288, 8, 4, 32)
    model = ModelPlacement.from_slots(phy2log, 32, layer_ids=list(range(3, 61)))
    repeats = repeats_by_brute_force(np.asarray(phy2log), 32)
    assert repeats.sum() > 0  # DeepSeek's EPLB puts two replicas of one expert on a GPU
    np.testing.assert_array_equal(model.repeated_slots, repeats)
    moe = list(range(3, 61))
    model.save(tmp_path / "s.json", "sglang", model="deepseek-v3")
    model.save(tmp_path / "t.yaml", "trtllm", model="deepseek-v3")
    model.save(tmp_path / "e.json", "eplb", model="deepseek-v3")
    rows = sglang_load(
        tmp_path / "s.json", ep_size=32, num_experts=256, num_redundant=32, num_hidden_layers=61
    )
    ranks = trtllm_load(tmp_path / "t.yaml", ep_size=32, layer_indices=moe, num_experts=256)
    np.testing.assert_array_equal(deepseek_eplb_check(tmp_path / "e.json", 256), phy2log)
    for i, layer in enumerate(moe):
        assert np.concatenate(rows[layer]).tolist() == phy2log[i].tolist()
        assert np.concatenate(ranks[layer]).tolist() == phy2log[i].tolist()
    for name, fmt in (("s.json", "sglang"), ("t.yaml", "trtllm"), ("e.json", "eplb")):
        back = moefast.load_placement(
            tmp_path / name, num_gpus=32, model="deepseek-v3", layer_ids=moe
        )
        np.testing.assert_array_equal(back.slots, phy2log)
        np.testing.assert_array_equal(back.replicas(), model.replicas())
        back.save(tmp_path / f"again-{name}", fmt, model="deepseek-v3")  # slot for slot
        assert (tmp_path / f"again-{name}").read_text() == (tmp_path / name).read_text()
    with pytest.raises(ValueError, match=r"GPU \d+ holds expert \d+ in two slots; vLLM-Ascend"):
        model.save(tmp_path / "a.json", "vllm-ascend", model="deepseek-v3")
    # Costs count a repeated expert once on its GPU: the same as the bool grid.
    trace = moefast.synthetic_trace(300, 256, 8, 1, seed=0, layer_ids=[3])
    grid = ModelPlacement(model.placements, 9, moe)
    np.testing.assert_array_equal(model.evaluate(trace), grid.evaluate(trace))
    print_repeats(model)
    out = capsys.readouterr().out
    assert f"repeats: {repeats.sum()} of {58 * 288} slots" in out
    assert f"in {np.count_nonzero(repeats)} of 58 layers" in out


def test_a_slot_map_must_hold_the_placement(tmp_path):
    model = ModelPlacement.from_slots(np.array([[0, 1, 2, 3, 0, 1], [3, 3, 0, 1, 2, 0]]), 2)
    assert model.repeated_slots.tolist() == [0, 1]
    model.save(tmp_path / "m.json")  # moefast's own file keeps the slot map too
    np.testing.assert_array_equal(moefast.load_placement(tmp_path / "m.json").slots, model.slots)
    with pytest.raises(ValueError, match="slots of layer 0 do not hold the layer's placement"):
        ModelPlacement(
            model.placements, 3, slots=np.array([[0, 1, 2, 3, 0, 2], [3, 3, 0, 1, 2, 0]])
        )
    with pytest.raises(ValueError, match=r"slots must be int \[layers"):
        ModelPlacement(model.placements, 3, slots=np.zeros((2, 5), dtype=int))
    # Filling the repeat gives a new grid, and drops the slot map.
    filled = model.filled(np.ones((2, 4)))
    assert filled.slots is None and filled.replicas().sum() == 12
    assert filled.placements[0] == model.placements[0]


def test_trtllm_files_have_mtp_rows_by_default_and_sglang_keeps_them(tmp_path):
    model = random_model(4, [2, 3, 4, 5, 6, 8])
    model.save(tmp_path / "t.yaml", "trtllm", model=LAYOUT)
    ranks = trtllm_load(
        tmp_path / "t.yaml", ep_size=4, layer_indices=[2, 3, 4, 5, 6, 8], num_experts=E
    )
    check_ranks(ranks[8], model.placements[-1], model.slots_per_gpu)
    model.save(tmp_path / "s.json", "sglang", model=LAYOUT)
    for name in ("t.yaml", "s.json"):
        back = moefast.load_placement(tmp_path / name, num_gpus=4, model=LAYOUT)
        assert back.layer_ids == [2, 3, 4, 5, 6, 8]
        np.testing.assert_array_equal(back.replicas(), model.replicas())


@pytest.mark.skipif(not DEEPSEEK_DECODE_LOAD.exists(), reason="needs ../shared/data")
def test_a_deepseek_v3_trtllm_file_loads_every_layer_the_engine_asks_for(tmp_path):
    counts = np.array(json.loads(DEEPSEEK_DECODE_LOAD.read_text())["logical_count"])
    phy2log, _, _ = rebalance_experts(counts[3:61], 288, 8, 4, 32)
    model = ModelPlacement.from_slots(phy2log, 32, layer_ids=list(range(3, 61)))
    model.save(tmp_path / "t.yaml", "trtllm", model="deepseek-v3")
    # Layers 3..60 and the MTP layer 61, which speculative decoding looks up.
    ranks = trtllm_load(
        tmp_path / "t.yaml", ep_size=32, layer_indices=list(range(3, 62)), num_experts=256
    )
    assert np.concatenate(ranks[61]).tolist() == default_map(288, 256).tolist()
    model.save(tmp_path / "n.yaml", "trtllm", model="deepseek-v3", mtp=False)
    with pytest.raises(AssertionError, match="KeyError: layer_idx 61 not found"):
        trtllm_load(tmp_path / "n.yaml", ep_size=32, layer_indices=[61], num_experts=256)


@pytest.mark.parametrize("fmt", ["sglang", "trtllm", "vllm-ascend"])
def test_launch_settings_are_what_the_engines_read(tmp_path, fmt):
    name = "t.yaml" if fmt == "trtllm" else "m.json"
    settings = random_model(4, [2, 3, 4, 5, 6]).save(tmp_path / name, fmt, model=LAYOUT)
    redundant = 4 * 17 - E
    if fmt == "vllm-ascend":
        text = settings["command_line"].split("--additional-config ", 1)[1]
        config = ascend_eplb_config(json.loads(text.strip("'")), known_top_level=set())
        assert config["expert_map_path"] == str(tmp_path / name)
        assert config["num_redundant_experts"] == redundant == settings["num_redundant_experts"]
        vllm_ascend_load(tmp_path / name, num_moe_layers=5, num_experts=E, ep_size=4)
        # The old top-level key is refused by AscendConfig, not read.
        with pytest.raises(AssertionError, match="extra keys"):
            ascend_eplb_config({"expert_map_path": str(tmp_path / name)}, set())
    elif fmt == "sglang":
        flags = settings["command_line"].split()
        assert flags[flags.index("--ep-num-redundant-experts") + 1] == str(redundant)
        assert flags[flags.index("--init-expert-location") + 1] == str(tmp_path / name)
        ep = int(flags[flags.index("--ep-size") + 1])
        sglang_load(
            tmp_path / name, ep_size=ep, num_experts=E, num_redundant=redundant, num_hidden_layers=8
        )
    else:
        assert settings["num_slots"] == E + redundant
        assert yaml.safe_load(settings["extra_llm_api_options"])["moe_config"][
            "load_balancer"
        ] == str(tmp_path / name)
        trtllm_load(
            tmp_path / name,
            ep_size=settings["moe_expert_parallel_size"],
            layer_indices=[2, 3, 4, 5, 6],
            num_experts=E,
        )
