"""Readers of every input format, on small hand-made files, and their errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from moefast.io.readers import load_expert_load, load_trace
from moefast.io.readers.sglang import expert_load_from_logical_count, trace_from_sglang_per_token
from moefast.io.readers.trtllm import expert_load_from_trtllm
from moefast.io.recorder import (
    HookRecorder,
    RoutingRecorder,
    topk_from_router_output,
    trace_from_router_logits,
)
from support.shared_data import DEEPSEEK_DECODE_LOAD as DEEPSEEK
from support.shared_data import OLMOE_C4_LOAD, needs_deepseek_statistics

HAVE_TORCH = importlib.util.find_spec("torch") is not None


# ---- JSON Lines -------------------------------------------------------------------------


def write_lines(path: Path, records) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_records_in_any_order(tmp_path):
    records = [
        {"layer": 1, "experts": [2, 0], "token_idx": 1, "gating_probs": [0.6, 0.4]},
        {"layer": 0, "experts": [3, 1], "token_idx": 0},
        {"layer": 1, "experts": [0, 1], "token_idx": 0, "note": "extra fields are ignored"},
        {"layer": 0, "experts": [1, 2], "token_idx": 1},
    ]
    trace = load_trace(write_lines(tmp_path / "t.jsonl", records), num_experts=5)
    assert trace.layer_ids == [0, 1] and trace.num_experts == 5
    np.testing.assert_array_equal(trace.topk, [[[3, 1], [0, 1]], [[1, 2], [2, 0]]])


def test_jsonl_request_ids_keep_tokens_apart(tmp_path):
    records = [
        {"layer": 0, "experts": [0, 1], "token_idx": 0, "request_id": "a"},
        {"layer": 0, "experts": [2, 3], "token_idx": 0, "request_id": "b"},
    ]
    trace = load_trace(write_lines(tmp_path / "t.jsonl", records))
    assert trace.num_tokens == 2 and trace.num_experts == 4


def test_jsonl_drops_incomplete_tokens_with_a_count(tmp_path):
    records = [
        {"layer": layer, "experts": [layer, layer + 1], "token_idx": t}
        for t in range(4)
        for layer in range(3)
    ]
    records = [r for r in records if not (r["token_idx"] in (1, 3) and r["layer"] == 2)]
    with pytest.warns(UserWarning, match="dropped 2 of 4 tokens"):
        trace = load_trace(write_lines(tmp_path / "t.jsonl", records))
    assert trace.num_tokens == 2 and trace.layer_ids == [0, 1, 2]


@pytest.mark.parametrize(
    "bad, match",
    [
        ("not json", "line 2: not JSON"),
        (
            '{"layer": 0, "experts": [1], "token_idx": 1}',
            "line 2: 1 experts where earlier records have 2",
        ),
        ('{"layer": 0, "experts": [1, 1], "token_idx": 1}', "line 2: an expert appears twice"),
        ('{"layer": "0", "experts": [1, 2], "token_idx": 1}', "line 2: 'layer' must be an integer"),
        ('{"layer": 0, "experts": [1, 2]}', "line 2: 'token_idx'"),
        ('{"layer": 0, "experts": "1,2", "token_idx": 1}', "line 2: 'experts'"),
        ('{"layer": 0, "experts": [0, 3], "token_idx": 0}', "line 2: a second record for token 0"),
        ("[1, 2]", "line 2: a record must be a JSON object"),
    ],
)
def test_jsonl_malformed_lines_are_named(tmp_path, bad, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"layer": 0, "experts": [0, 1], "token_idx": 0}\n' + bad + "\n")
    with pytest.raises(ValueError, match=match) as info:
        load_trace(path)
    assert str(path) in str(info.value)


def test_jsonl_id_beyond_int64_is_named(tmp_path):
    # numpy raised a bare OverflowError for it.
    path = write_lines(tmp_path / "t.jsonl", [{"layer": 0, "experts": [0, 10**20], "token_idx": 0}])
    with pytest.raises(ValueError, match=r"line 1: expert id 100000000000000000000 out of range"):
        load_trace(path)


def test_jsonl_ids_beyond_num_experts(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [{"layer": 0, "experts": [0, 7], "token_idx": 0}])
    with pytest.raises(ValueError, match="out of range"):
        load_trace(path, num_experts=4)


# ---- SGLang per_token and stat ----------------------------------------------------------


def per_token_dump(ids, p2l=None, forward_pass_id=0):
    dump = {
        "records": [
            {
                "forward_pass_id": forward_pass_id,
                "topk_ids_of_layer": np.asarray(ids, np.int32),
                "input_ids": [1] * np.asarray(ids).shape[1],
            }
        ]
    }
    if p2l is not None:
        dump["last_physical_to_logical_map"] = np.asarray(p2l)
    return dump


def test_sglang_per_token_drops_dense_layers_and_maps_physical_ids():
    # layer 0 dense (never written: -1), layers 1 and 2 MoE; 6 physical slots of 4 experts
    p2l = [[0, 1, 2, 3, 0, 1]] * 3
    ids = [
        [[-1, -1], [-1, -1], [-1, -1]],
        [[0, 4], [1, 2], [5, 3]],  # 4 -> 0 is a duplicate of 0: that token is invalid
        [[2, 3], [0, 5], [4, 2]],
    ]
    with pytest.warns(UserWarning, match="dropped 1 of 3 tokens"):
        trace = trace_from_sglang_per_token([per_token_dump(ids, p2l)])
    assert trace.layer_ids == [1, 2] and trace.num_experts == 4
    np.testing.assert_array_equal(trace.topk, [[[1, 2], [0, 1]], [[1, 3], [0, 2]]])


def test_sglang_first_pass_zero_rows_are_dense():
    ids = [[[0, 0], [0, 0]], [[1, 2], [0, 3]]]  # the buffer starts as zeros before the first reset
    trace = trace_from_sglang_per_token([per_token_dump(ids)], num_experts=4)
    assert trace.layer_ids == [1] and trace.num_tokens == 2


def test_sglang_ranks_concatenate_and_tp_twins_count_once():
    a = per_token_dump([[[0, 1], [2, 3]]], forward_pass_id=7)
    b = per_token_dump([[[1, 2]]], forward_pass_id=7)
    twin = per_token_dump([[[0, 1], [2, 3]]], forward_pass_id=7)
    trace = trace_from_sglang_per_token([a, b, twin], num_experts=4)
    np.testing.assert_array_equal(trace.topk[:, 0, :], [[0, 1], [2, 3], [1, 2]])


@pytest.mark.parametrize(
    "dump, match",
    [
        ({"logical_count": [[1]]}, "no 'records'"),
        ({"records": [{"forward_pass_id": 0}]}, "no 'topk_ids_of_layer'"),
        (per_token_dump([[0, 1]]), "must be \\[layers, tokens, k\\]"),
        (
            per_token_dump([[[0, 1]]], p2l=[[0, 1], [1, 0]]),
            "last_physical_to_logical_map has shape",
        ),
        ({"records": []}, "no record holds any token"),
    ],
)
def test_sglang_malformed_dumps(dump, match):
    with pytest.raises(ValueError, match=match):
        trace_from_sglang_per_token([dump], source="rank0.pt")


def test_sglang_stat_sums_steps():
    count = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(expert_load_from_logical_count(count), count.sum(axis=0))
    with pytest.raises(ValueError, match="negative"):
        expert_load_from_logical_count([[1, -1]])


@pytest.mark.skipif(HAVE_TORCH, reason="checks the message shown when torch is absent")
def test_pt_files_without_torch_say_what_to_install(tmp_path):
    path = tmp_path / "expert_distribution_recorder_0.pt"
    path.write_bytes(b"\x80\x02")
    with pytest.raises(ImportError, match=r"pip install 'moefast\[torch\]'"):
        load_trace(path)
    with pytest.raises(ImportError, match="torch"):
        load_expert_load(path)


def test_logical_count_json(tmp_path):
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"logical_count": [[0, 0, 0], [3, 1, 2], [1, 1, 4]]}))
    load, layers = load_expert_load(path, return_layer_ids=True)
    np.testing.assert_array_equal(load, [[3, 1, 2], [1, 1, 4]])
    assert layers == [1, 2]
    assert load_expert_load(path, drop_empty=False).shape == (3, 3)


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"logical_count": [[1, 2], [3]]}', "rectangular"),
        ('{"counts": [[1, 2]]}', "trace|router_data|no 'logical_count'"),
        ('{"logical_count": [[1, 2],\n [3, 4]', "line 2"),
    ],
)
def test_malformed_logical_count(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_expert_load(
            path, format="logical_count" if "line" in match or "rect" in match else None
        )


def test_real_olmoe_counts_in_logical_count_form():
    load, layers = load_expert_load(OLMOE_C4_LOAD, return_layer_ids=True)
    assert load.shape == (3, 64) and layers == [0, 1, 2]
    # Every token picks 8 experts in every layer: each row sums to 8 x 208,896 tokens.
    np.testing.assert_array_equal(load.sum(axis=1), [8 * 208_896] * 3)


@needs_deepseek_statistics
def test_real_deepseek_statistics():
    load, layers = load_expert_load(DEEPSEEK, return_layer_ids=True)
    assert load.shape == (58, 256) and layers == list(range(3, 61))
    np.testing.assert_allclose(
        load.sum(axis=1) / 8, load.sum(axis=1)[0] / 8
    )  # same tokens in every layer


# ---- TensorRT-LLM statistics ------------------------------------------------------------


def test_trtllm_statistics_folder(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    (tmp_path / "meta_info.json").write_text(
        json.dumps({"num_experts": 4, "num_experts_per_token": 2})
    )
    safetensors_numpy.save_file(
        {
            "0_3": np.array([1, 2, 3, 4], np.int32),
            "1_3": np.array([1, 1, 1, 1], np.int32),
            "0_5": np.array([0, 0, 2, 2], np.int32),
        },
        str(tmp_path / "rank0.safetensors"),
    )
    safetensors_numpy.save_file(
        {"0_3": np.array([4, 0, 0, 0], np.int32), "0_5": np.array([1, 1, 0, 0], np.int32)},
        str(tmp_path / "rank1.safetensors"),
    )
    load, layers = load_expert_load(tmp_path, return_layer_ids=True)
    assert layers == [3, 5]
    np.testing.assert_array_equal(load, [[6, 3, 4, 5], [1, 1, 2, 2]])


def test_trtllm_conversion_errors():
    with pytest.raises(ValueError, match="num_experts"):
        expert_load_from_trtllm({}, [])
    with pytest.raises(ValueError, match="not '<iter>_<layer>'"):
        expert_load_from_trtllm({"num_experts": 2}, [{"layer3": np.zeros(2)}])
    with pytest.raises(ValueError, match="holds 3 counts for 2 experts"):
        expert_load_from_trtllm({"num_experts": 2}, [{"0_3": np.zeros(3)}])


def test_trtllm_folder_without_meta(tmp_path):
    (tmp_path / "rank0.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"meta_info\.json"):
        load_expert_load(tmp_path, format="trtllm")


# ---- other loads and the fingerprinting JSON ---------------------------------------------


def test_npy_and_trace_loads(tmp_path):
    np.save(tmp_path / "l.npy", np.array([1.0, 0.0, 3.0]))
    np.testing.assert_array_equal(load_expert_load(tmp_path / "l.npy"), [[1.0, 0.0, 3.0]])
    from moefast.trace import Trace

    Trace(np.array([[[0, 1]], [[1, 2]]]), 3).save(tmp_path / "t.npz")
    np.testing.assert_array_equal(load_expert_load(tmp_path / "t.npz"), [[1, 2, 1]])


def test_fingerprint_json(tmp_path):
    answer = {
        "row_index": 0,
        "router_data": [
            {
                "token_5": {
                    "layer_0": {"selected_experts": [3, 1], "selected_probs": [0.6, 0.4]},
                    "layer_1": {"selected_experts": [0, 2], "selected_probs": [0.5, 0.5]},
                }
            },
            {
                "token_6": {
                    "layer_1": {"selected_experts": [1, 2]},
                    "layer_0": {"selected_experts": [0, 3]},
                }
            },
        ],
    }
    path = tmp_path / "example.json"
    path.write_text(json.dumps(answer))
    trace = load_trace(path, num_experts=4)
    np.testing.assert_array_equal(trace.topk, [[[3, 1], [0, 2]], [[0, 3], [1, 2]]])
    answer["router_data"][1]["token_6"].pop("layer_1")
    path.write_text(json.dumps(answer))
    with pytest.raises(ValueError, match="has layers \\[0\\]"):
        load_trace(path)


def test_malformed_npz(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, ids=np.zeros((2, 1, 2), int))
    with pytest.raises(ValueError, match="no 'topk'"):
        load_trace(path)
    path.write_bytes(b"PK but not a zip")
    with pytest.raises(ValueError, match=r"t\.npz"):
        load_trace(path)


# ---- transformers recorder (no torch: fake modules of the same interface) -------------------


class FakeHandle:
    def __init__(self, hooks, hook):
        self.hooks, self.hook = hooks, hook

    def remove(self):
        self.hooks.remove(self.hook)


class FakeModule:
    def __init__(self, output):
        self.output, self.hooks = output, []

    def register_forward_hook(self, hook):
        self.hooks.append(hook)
        return FakeHandle(self.hooks, hook)

    def __call__(self):
        for hook in list(self.hooks):
            hook(self, (), self.output)


class FakeModel:
    def __init__(self, outputs):
        self.routers = {f"model.layers.{i}.mlp.gate": FakeModule(o) for i, o in outputs.items()}
        self.routers["model.layers.0.mlp.shared_expert_gate"] = FakeModule(None)

    def named_modules(self):
        yield "model", self
        yield from self.routers.items()

    def forward(self):
        for name, module in self.routers.items():
            if "shared" not in name:
                module()


def test_recorder_takes_top_k_of_logits_and_ids_of_tuples():
    logits = np.array([[0.1, 2.0, 1.0, -1.0], [3.0, 0.0, 0.5, 2.5]], dtype=np.float32)
    ids_tuple = (np.array([[3, 0], [1, 2]]), np.array([[0.7, 0.3], [0.6, 0.4]], dtype=np.float32))
    model = FakeModel({1: logits, 4: ids_tuple})
    with HookRecorder(model, k=2, num_experts=4) as recorder:
        model.forward()
        model.forward()
    model.forward()  # after the block: not recorded
    trace = recorder.trace()
    assert trace.layer_ids == [1, 4] and trace.num_tokens == 4
    np.testing.assert_array_equal(trace.topk[:2, 0], [[1, 2], [0, 3]])
    np.testing.assert_array_equal(trace.topk[:2, 1], [[3, 0], [1, 2]])
    assert all(not m.hooks for m in model.routers.values())


def test_recorder_errors():
    with pytest.raises(ValueError, match="no router module"):
        HookRecorder(
            type("M", (), {"named_modules": lambda self: iter([("lm_head", None)])})(), 2, 4
        )
    recorder = HookRecorder(FakeModel({0: np.zeros((1, 4), np.float32)}), 2, 4)
    with pytest.raises(ValueError, match="nothing recorded"):
        recorder.trace()
    with pytest.raises(ValueError, match="logits"):
        topk_from_router_output(np.zeros((2, 5), np.float32), 2, 4)


@pytest.mark.skipif(HAVE_TORCH, reason="checks the message shown when torch is absent")
def test_routing_recorder_needs_torch():
    with pytest.raises(ImportError, match="moefast\\[torch\\]"):
        RoutingRecorder(FakeModel({0: np.zeros((1, 4))}))


def test_trace_from_router_logits():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(5, 6)).astype(np.float32) for _ in range(3)]
    trace = trace_from_router_logits(logits, k=2)
    for layer, layer_logits in enumerate(logits):
        expected = np.argsort(-layer_logits, axis=1)[:, :2]
        np.testing.assert_array_equal(trace.topk[:, layer], expected)


# ---- with torch installed (moefast[torch]); skipped otherwise ------------------------------


def test_sglang_pt_files_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    ids = torch.tensor([[[-1, -1], [-1, -1]], [[0, 1], [2, 3]]], dtype=torch.int32)
    dump = {
        "records": [{"forward_pass_id": 0, "topk_ids_of_layer": ids, "input_ids": [5, 6]}],
        "last_physical_to_logical_map": torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]),
    }
    torch.save(dump, tmp_path / "expert_distribution_recorder_0.pt")
    trace = load_trace(tmp_path)
    assert trace.layer_ids == [1]
    np.testing.assert_array_equal(trace.topk[:, 0], [[3, 2], [1, 0]])
    stat = tmp_path / "stat"
    stat.mkdir()
    torch.save(
        {"rank": 0, "logical_count": torch.ones((3, 2, 4), dtype=torch.int32)}, stat / "r0.pt"
    )
    torch.save(
        {"rank": 1, "logical_count": torch.ones((3, 2, 4), dtype=torch.int32)}, stat / "r1.pt"
    )
    np.testing.assert_array_equal(load_expert_load(stat), np.full((2, 4), 6.0))


def test_routing_recorder_on_a_tiny_transformers_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=6,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    inputs = torch.randint(0, 64, (1, 10))
    with torch.no_grad(), RoutingRecorder(model) as recorder:
        model(inputs)
        model(inputs[:, :7])
    trace = recorder.trace()
    assert (
        trace.topk.shape == (17, 3, 2) and trace.num_experts == 6 and trace.layer_ids == [0, 1, 2]
    )
    with torch.no_grad():
        logits = model(inputs, output_router_logits=True).router_logits
    reference = trace_from_router_logits(list(logits), k=2)
    np.testing.assert_array_equal(np.sort(trace.topk[:10], axis=2), np.sort(reference.topk, axis=2))


def test_recorder_warns_when_a_bias_corrected_router_gives_only_logits():
    model = FakeModel({0: np.zeros((2, 4), np.float32)})
    model.routers["model.layers.0.mlp.gate"].e_score_correction_bias = np.zeros(4)
    with pytest.warns(UserWarning, match="correction bias"), HookRecorder(model, 2, 4):
        model.forward()


def test_recorder_skips_dense_layers_of_a_tiny_deepseek_v3():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "DeepseekV3ForCausalLM"):
        pytest.skip("this transformers has no DeepSeek-V3")
    config = transformers.DeepseekV3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        first_k_dense_replace=1,
        n_group=2,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        rope_scaling=None,
    )
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad(), RoutingRecorder(model) as recorder:
        model(torch.randint(0, 64, (1, 9)))
    trace = recorder.trace()
    assert trace.layer_ids == [1, 2] and trace.topk.shape == (9, 2, 2) and trace.num_experts == 8
