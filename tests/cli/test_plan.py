"""``moefast plan`` for a serving profile, and from per-expert loads alone."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import select
import subprocess
import sys
import time

import moefast as mf
import numpy as np
import pytest
from moefast.cli import build_parser, main
from moefast.cli.output import print_verdict
from moefast.cli.plan import load_source
from moefast.io.engines import load_placement
from moefast.trace import Trace
from support.engine_writers import trtllm_statistics_folder


def test_plan_prints_the_profile_and_names_every_regime(tmp_path, capsys):
    trace = tmp_path / "t.npz"
    synth = ["synth", "--experts=16", "--k=2", "--layers=2", "--tokens=600", "--out", str(trace)]
    assert main(synth) == 0
    out = tmp_path / "p.json"
    args = ["plan", str(trace), "--gpus", "4", "--slots", "5", "--format", "json"]
    assert main([*args, "--out", str(out), "--preset", "olmoe"]) == 0
    text = capsys.readouterr().out
    assert "single-token (B = 1) expert rounds" in text
    assert "no --batch-sizes: B = 1 and B = 64 (a typical decode batch)" in text
    assert "calibration fit" in text  # the preset says where it comes from
    recommended = re.search(r"recommended: (.+?), [\d.]+ us expected step time", text)
    assert recommended is not None and f"{recommended[1]} *" in text  # marked in the table
    # One flag per size: --batch-sizes with shares.
    assert main([*args, "--out", str(out), "--batch-sizes", "1:0.3,8:0.7"]) == 0
    text = capsys.readouterr().out
    assert "batch-aware (B=8)" in text and "B = 8 (us)" in text
    assert "B = 1 30%, B = 8 70%" in text
    # A synthetic trace: the table, the headlines and the settings say so.
    assert text.count("[SYNTHETIC routing (moefast synth), not a recorded trace]") == 3
    assert json.loads(out.read_text())["settings"]["synthetic"] is True


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:layers .* have no placement")
def test_plan_from_a_logical_count_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    counts = np.zeros((6, 256), dtype=np.int64)
    counts[3:] = rng.zipf(1.6, size=(3, 256)).clip(max=5000)
    loads = tmp_path / "decode.json"
    loads.write_text(json.dumps({"logical_count": counts.tolist()}))
    out = tmp_path / "f.json"
    args = ["plan", str(loads), "--model", "deepseek-v3", "--gpus", "32", "--slots", "9"]
    assert main([*args, "--out", str(out), "--batch-sizes", "16"]) == 0
    text = capsys.readouterr().out
    assert "co-activation gains cannot be measured" in text
    assert "--expert-distribution-recorder-mode per_token" in text
    assert "independent (no co-activation)" in text
    redundant = int(re.search(r"redundant experts: (\d+) \(--ep-num-redundant-experts", text)[1])
    assert f"--ep-num-redundant-experts {redundant} " in text
    # Under SGLang's own dispatch by default, and every figure says so.
    assert "the fastest of 0, 32 on the profile, under SGLang static dispatch" in text
    assert "searched for SGLang static dispatch (B = 16)" in text
    assert "B = 1 rounds/layer" in text and "SGLang static dispatch; CostModel" in text
    slots = 8 + redundant // 32
    placement = load_placement(out, "sglang", num_gpus=32, num_experts=256, model="deepseek-v3")
    assert placement.slots_per_gpu == slots


def test_plan_shows_progress_on_a_pipe_unless_quiet(tmp_path, capsys):
    trace = tmp_path / "t.npz"
    synth = ["synth", "--experts=16", "--k=2", "--layers=2", "--tokens=600", "--out", str(trace)]
    assert main(synth) == 0
    args = ["plan", str(trace), "--gpus", "4", "--slots", "5", "--format", "json"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err  # stderr is not a terminal here: one line per layer
    lines = err.splitlines()
    assert lines[:3] == [
        f"moefast plan: reading {trace}",
        "planning 2 layers of 600 tokens on 4 GPUs x 5 slots",
        "planning layers: 0/2",
    ]
    assert "planning layers: 1/2" in lines and "planning layers: 2/2" in lines
    # The candidates of the serving profile, one line each: five without batch-aware ones,
    # at 5 slots per GPU and at 4 (no redundant expert), the plan's own replanned at 4.
    scoring = [line for line in lines if line.startswith("scoring the candidates")]
    assert scoring == [f"scoring the candidates on the serving profile: {i}/10" for i in range(11)]
    assert "planning layers, 4 slots per GPU: 2/2" in lines
    assert main([*args, "--out", str(tmp_path / "p.json"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="select on a pipe")
def test_a_long_plan_shows_progress_on_a_pipe_within_two_seconds(tmp_path):
    # Uniform routing of 64 experts, top-8: every token a new subset, seconds per layer.
    rng = np.random.default_rng(0)
    topk = rng.random((40_000, 4, 64), dtype=np.float32).argsort(axis=2)[:, :, :8]
    trace = tmp_path / "big.npz"
    Trace(topk, 64).save(trace)
    command = [sys.executable, "-m", "moefast.cli", "plan", str(trace), "--gpus", "8"]
    began = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--slots", "10", "--format", "json", "--out", str(tmp_path / "p.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 10.0)
        first = proc.stderr.readline() if ready else ""
        waited = time.perf_counter() - began
        running = proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()
    assert first.startswith("moefast plan: reading"), first
    assert waited < 2.0, f"the first progress line came after {waited:.1f} s"
    assert running  # shown while the plan runs, not flushed at its end


def test_loads_only_inputs_are_told_from_traces(tmp_path):
    topk = np.random.default_rng(2).integers(0, 8, size=(40, 1, 2))
    topk[:, 0, 1] = (topk[:, 0, 0] + 1) % 8
    trtllm_statistics_folder(tmp_path / "counts", topk, [3], 8, raw=False)
    trtllm_statistics_folder(tmp_path / "raw", topk, [3], 8, raw=True)
    assert load_source([str(tmp_path / "counts")]) == "trtllm"
    assert load_source([str(tmp_path / "raw")]) is None  # per-token ids: a trace
    torch = pytest.importorskip("torch")
    torch.save({"logical_count": torch.ones(2, 8, dtype=torch.int64)}, tmp_path / "stat.pt")
    assert load_source([str(tmp_path / "stat.pt")]) == "sglang"
    records = [{"topk_ids_of_layer": torch.zeros(1, 2, 2, dtype=torch.int64)}]
    torch.save({"records": records}, tmp_path / "per_token.pt")
    assert load_source([str(tmp_path / "per_token.pt")]) is None


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:layers .* have no placement")
def test_plan_from_tensorrt_llm_counts_takes_the_loads_only_path(tmp_path, capsys):
    rng = np.random.default_rng(1)
    topk = np.stack([rng.choice(32, size=(2, 4), replace=False) for _ in range(300)])
    folder = tmp_path / "stats"
    trtllm_statistics_folder(folder, topk, [0, 1], 32, raw=False)  # counts only
    out = tmp_path / "p.yaml"
    args = ["plan", str(folder), "--model", "gpt-oss-20b", "--gpus", "4", "--slots", "10"]
    assert main([*args, "--format", "trtllm", "--out", str(out), "--batch-sizes", "1,4"]) == 0
    text = capsys.readouterr().out
    assert "co-activation gains cannot be measured" in text
    assert "TensorRT-LLM has no setting that records per-token routing" in text
    assert "under TensorRT-LLM dispatch" in text  # the engine's own rule scores the figures
    redundant = int(re.search(r"redundant experts: (\d+) \(num_slots: (\d+)", text)[1])
    assert f"num_slots: {32 + redundant} in moe_config" in text and redundant in (0, 8)
    assert out.exists()


def test_plan_flags_are_grouped_by_the_option_class_they_fill() -> None:
    (plan_parser,) = (
        a.choices["plan"]
        for a in build_parser()._actions
        if isinstance(a, argparse._SubParsersAction)
    )
    groups = {g.title: {a.dest for a in g._group_actions} for g in plan_parser._action_groups}
    # Each flag of a group fills one field of the class the group names.
    expected = {
        "cluster (moefast.Cluster)": (
            mf.Cluster,
            {
                "gpus": "num_gpus",
                "slots": "slots_per_gpu",
                "topology": "topology",
                "gpus_per_node": "topology",
                "num_groups": "num_groups",
                "round_us": "round_us",
            },
        ),
        "evaluation (moefast.Evaluation)": (
            mf.Evaluation,
            {f: f for f in ("coverage", "holdout", "split_by", "estimator")},
        ),
        "compute budget (moefast.Budget)": (
            mf.Budget,
            {"time_budget": "time_budget", "work_budget": "work_budget"},
        ),
        "re-planning (moefast.MoveBudget)": (
            mf.MoveBudget,
            {
                "current": "current",
                "current_format": "current",
                "max_moves": "max_moves",
                "copy_cost": "copy_cost",
            },
        ),
        "serving profile (moefast.ServingProfile)": (
            mf.ServingProfile,
            {"batch_sizes": "batch_sizes", "dispatch": "dispatch"},
        ),
    }
    for title, (cls, to_field) in expected.items():
        assert groups[title] == set(to_field), title
        assert set(to_field.values()) <= {f.name for f in dataclasses.fields(cls)}, title


def test_the_moefast_dispatch_line_names_redundant_experts_once(capsys) -> None:
    serving = {
        "warnings": [],
        "ties": [],
        "headline": "recommended: greedy",
        "dispatch": "sglang-static",
        "redundant_experts": 0,
        "num_experts": 256,
        "candidates": {"greedy": {"redundant_experts": 0}},
    }
    for name, redundant, shown in [
        ("round-robin, 32 redundant", 32, "round-robin, 32 redundant would run"),
        ("greedy", 8, "greedy (8 redundant) would run"),
    ]:
        serving["with_moefast_dispatch"] = {
            "candidate": name,
            "expected_step_time_us": 100.0,
            "redundant_experts": redundant,
            "below_recommended": 0.1,
        }
        print_verdict(serving, "sglang")
        line = capsys.readouterr().out.splitlines()[-1]
        assert shown in line and "redundant (32 redundant)" not in line
