"""The recording client against local servers that answer as SGLang and vLLM do
(tests/support/engine_servers.py), and the reader of the responses it saves."""

from __future__ import annotations

import base64
import json

import moefast
import numpy as np
import pytest
from moefast.cli import main
from moefast.io.recording import record
from support.engine_servers import engine_server

PROMPTS = [{"id": f"p{i}", "text": " ".join(["word"] * (3 + i))} for i in range(6)]


def write_prompts(path, prompts=PROMPTS):
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


def expected(state, prompts=PROMPTS):
    """The trace built from the served ids, requests numbered in prompt order."""
    blocks = [state.served[p["text"]] for p in prompts]
    topk = np.concatenate(blocks).astype(np.int64)
    ids = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
    return topk, ids


def same_order(trace, prompts, lines):
    """The trace's tokens grouped by prompt, in prompt order: responses arrive in any order
    and string ids are numbered in the order of the file."""
    order = [json.loads(line)["id"] for line in lines]
    return np.concatenate([trace.topk[trace.request_ids == order.index(p["id"])] for p in prompts])


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_record_writes_the_served_routing(tmp_path, engine):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "trace.jsonl"
    with engine_server(engine) as (url, state):
        sent = record(url, prompts, out, engine=engine, num_layers=3, k=2, concurrency=3)
    assert sent == len(PROMPTS)
    trace = moefast.load_trace(out, num_experts=16)
    lines = out.read_text().splitlines()
    want, _ = expected(state)
    np.testing.assert_array_equal(same_order(trace, PROMPTS, lines), want)
    # One request id per response, its tokens = prompt + completion - 1.
    counts = np.bincount(trace.request_ids)
    by_id = {json.loads(line)["id"]: n for line, n in zip(lines, counts, strict=True)}
    assert by_id == {p["id"]: len(p["text"].split()) + 16 - 1 for p in PROMPTS}
    # The subset tables equal those of the served ids.
    served = moefast.Trace(want, 16)
    for layer in range(3):
        np.testing.assert_array_equal(trace.table(layer).subsets, served.table(layer).subsets)
        np.testing.assert_array_equal(trace.table(layer).weights, served.table(layer).weights)


def test_record_resumes_after_a_failure(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "trace.jsonl"
    with engine_server("sglang") as (url, state):
        state.fail.add(PROMPTS[2]["text"])
        with pytest.raises(OSError, match="HTTP 500"):
            record(url, prompts, out, num_layers=3, k=2, concurrency=1)
        first = [json.loads(x)["id"] for x in out.read_text().splitlines()]
        assert first[:2] == ["p0", "p1"] and "p2" not in first
        with open(out, "a") as f:
            f.write('{"id": "p2", "eng')  # a line cut off by a crash
        state.requests = 0
        left = len(PROMPTS) - len(first)
        assert record(url, prompts, out, num_layers=3, k=2, concurrency=2) == left
        assert state.requests == left
    ids = sorted(json.loads(x)["id"] for x in out.read_text().splitlines())
    assert ids == [p["id"] for p in PROMPTS]
    assert moefast.load_trace(out).num_tokens == sum(len(p["text"].split()) + 15 for p in PROMPTS)


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_record_says_when_the_server_has_the_flag_off(tmp_path, engine):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "trace.jsonl"
    with (
        engine_server(engine, flag=False) as (url, _),
        pytest.raises(ValueError, match="--enable-return-routed-experts"),
    ):
        record(url, prompts, out, engine=engine, num_layers=3, k=2)
    assert not out.exists() or out.read_text() == ""


def test_record_command(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:2])
    out = tmp_path / "trace.jsonl"
    with engine_server("sglang") as (url, _):
        argv = ["record", "--url", url, "--prompts", str(prompts), "--out", str(out)]
        assert main([*argv, "--num-layers", "3", "--top-k", "2", "--quiet"]) == 0
        assert "2 prompts recorded" in capsys.readouterr().out
        assert main(argv) == 2  # SGLang's answers need the shape
        assert "--num-layers" in capsys.readouterr().err
    assert moefast.load_trace(out).num_layers == 3


def test_saved_responses_read_without_the_wrapper(tmp_path):
    ids = np.arange(24, dtype=np.int32).reshape(4, 3, 2) % 7
    sglang = {
        "text": "x",
        "meta_info": {
            "id": "a",
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "routed_experts": base64.b64encode(ids.tobytes()).decode(),
        },
    }
    vllm = {"id": "b", "choices": [{"index": 0, "routed_experts": ids.tolist()}]}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(sglang) + "\n" + json.dumps(vllm) + "\n")
    trace = moefast.load_trace(path, num_layers=3, k=2)
    np.testing.assert_array_equal(trace.topk, np.concatenate([ids, ids]))
    np.testing.assert_array_equal(trace.request_ids, [0] * 4 + [1] * 4)
    with pytest.raises(ValueError, match="num_layers= and k="):
        moefast.load_trace(path)
    with pytest.raises(ValueError, match=r"not 16 ids \(4 tokens x 2 layers"):
        moefast.load_trace(path, num_layers=2, k=2)
