"""The moefast command, end to end in temporary folders."""

from __future__ import annotations

import json

import moefast
import numpy as np
import pytest
from moefast.cli import build_parser, main
from moefast.data import GPTOSS20B_DECODE
from moefast.io.engines import load_placement
from moefast.io.readers import load_trace
from moefast.placement import ModelPlacement
from support.shared_data import OLMOE_C4_LOAD


@pytest.mark.parametrize("command", ["demo", "plan", "evaluate", "inspect", "synth", "simulate"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: moefast " + command in capsys.readouterr().out


def test_missing_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_inspect_bundled_trace(capsys):
    assert main(["inspect", str(GPTOSS20B_DECODE), "--pairs", "3"]) == 0
    out = capsys.readouterr().out
    assert "645 tokens, 24 layers" in out and "32 experts, k = 4" in out
    trace = load_trace(GPTOSS20B_DECODE)
    table = trace.table(0)
    line = next(line for line in out.splitlines() if line.split()[:1] == ["0"])
    assert line.split()[1:5] == [
        str(len(table)),
        *(str(len(table.prune(coverage=c))) for c in (0.8, 0.9, 0.99)),
    ]
    pairs = out.split("most co-activated pairs")[1].strip().splitlines()[2:]
    assert len(pairs) == 3


def synth_args(experts: int, k: int, layers: int, tokens: int, out, *extra: str) -> list[str]:
    sizes = {"--experts": experts, "--k": k, "--layers": layers, "--tokens": tokens}
    return ["synth", *(f"{a}={v}" for a, v in sizes.items()), "--out", str(out), *extra]


def test_synth_writes_a_trace(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(synth_args(16, 2, 3, 300, out)) == 0
    trace = load_trace(out)
    assert trace.topk.shape == (300, 3, 2) and trace.num_experts == 16


def test_synth_matches_a_recorded_load(tmp_path):
    out = tmp_path / "olmoe.npz"
    assert main(synth_args(64, 8, 2, 5000, out, "--load", str(OLMOE_C4_LOAD))) == 0
    from moefast.io.readers import load_expert_load

    target = load_expert_load(OLMOE_C4_LOAD)[:2]
    got = load_trace(out).expert_load()
    want = 8 * 5000 * target / target.sum(axis=1, keepdims=True)
    assert (np.abs(got - want).sum(axis=1) / got.sum(axis=1) < 0.03).all()


def test_synth_load_of_other_expert_count_is_refused(tmp_path, capsys):
    np.save(tmp_path / "l.npy", np.ones(8))
    code = main(synth_args(16, 2, 1, 10, tmp_path / "x.npz", "--load", str(tmp_path / "l.npy")))
    assert code == 2 and "loads of 8 experts" in capsys.readouterr().err


def test_evaluate_a_placement_file(tmp_path, capsys):
    trace = load_trace(GPTOSS20B_DECODE)
    replicas = np.zeros((32, 4), dtype=bool)
    replicas[np.arange(32), np.arange(32) // 8] = True  # contiguous, 8 experts per GPU
    model = ModelPlacement([moefast.Placement(replicas)] * trace.num_layers, 8, trace.layer_ids)
    model.save(tmp_path / "p.json", "sglang", model="gpt-oss-20b")
    assert (
        main(
            [
                "evaluate",
                str(GPTOSS20B_DECODE),
                str(tmp_path / "p.json"),
                "--gpus",
                "4",
                "--no-baselines",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["5"]).split()
    assert float(row[1]) == pytest.approx(moefast.expected_cost(trace.table(5), model[5]), abs=5e-4)
    assert float(row[2]) == pytest.approx(
        moefast.lower_bound(trace.table(5), 4, model.slots_per_gpu), abs=5e-4
    )


def test_evaluate_needs_the_gpu_count_for_sglang(tmp_path, capsys):
    replicas = np.zeros((32, 4), dtype=bool)
    replicas[np.arange(32), np.arange(32) % 4] = True
    ModelPlacement([moefast.Placement(replicas)], 8).save(
        tmp_path / "p.json", "sglang", num_layers=1
    )
    assert main(["evaluate", str(GPTOSS20B_DECODE), str(tmp_path / "p.json")]) == 2
    assert "num_gpus" in capsys.readouterr().err


def test_bad_trace_is_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"layer": 0}\n')
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 1" in err


#: `moefast plan` of the bundled trace on 4 GPUs x 10 slots.
PLAN_GPTOSS = ["plan", str(GPTOSS20B_DECODE), "--gpus", "4", "--slots", "10"]


@pytest.mark.slow
def test_plan_end_to_end(tmp_path, capsys):
    out = tmp_path / "placement.json"
    report_dir = tmp_path / "report"
    code = main(
        [
            *PLAN_GPTOSS,
            "--format",
            "sglang",
            "--model",
            "gpt-oss-20b",
            "--out",
            str(out),
            "--report",
            str(report_dir),
        ]
    )
    assert code == 0
    placement = load_placement(out, num_gpus=4)
    slots = placement.slots_per_gpu  # 10, or fewer where the serving profile finds it faster
    assert len(placement) == 24 and slots in (8, 9, 10)
    p2l = np.array(json.loads(out.read_text())["physical_to_logical_map"])
    for layer, p in enumerate(placement):
        assert all(p.replicas[e, slot // slots] for slot, e in enumerate(p2l[layer]))
    for name in (
        "report.md",
        "coactivation.png",
        "layer_costs.png",
        "slot_sweep.png",
        "learning_curve.png",
        "serving.png",
    ):
        assert (report_dir / name).stat().st_size > 0
    markdown = (report_dir / "report.md").read_text()
    assert "The plan's 10 slots are marked." in markdown
    assert "## Step time on the serving profile (held-out)" in markdown
    printed = capsys.readouterr().out
    flags = f"--ep-size 4 --ep-num-redundant-experts {4 * slots - 32} --init-expert-location {out}"
    assert flags in printed
    assert flags in (report_dir / "report.md").read_text()
    # 645 tokens: the last 20% are held out, and the printed figures are scored on them.
    assert "held-out expected cost per layer" in printed
    assert "129 held-out tokens" in printed
    _, test = load_trace(GPTOSS20B_DECODE).split(0.2, by="time")
    row = next(line for line in printed.splitlines() if line.split()[:1] == ["0"]).split()
    # The per-layer table is the plan's own at 10 slots; the written file is the serving
    # profile's choice, its greedy at 10 slots or at fewer.
    greedy = moefast.plan(load_trace(GPTOSS20B_DECODE), 4, slots, method="greedy")
    pairs = zip(placement, greedy, strict=True)
    assert all(np.array_equal(p.replicas, g.replicas) for p, g in pairs)
    if slots == 10:
        assert float(row[4]) == pytest.approx(
            moefast.expected_cost(test.table(0), placement[0]), abs=5e-4
        )
    assert "Held-out gain" in (report_dir / "report.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        # Coverage 2 or nan planned on the full table, silently.
        (["--coverage", "2"], "coverage must be in (0, 1], got 2.0"),
        (["--coverage", "nan"], "coverage must be in (0, 1], got nan"),
        # A traceback with OverflowError before.
        (["--gpus", "99999999999999999999"], "num_gpus must be at most 1024"),
        (["--time-budget", "-1"], "time_budget must be finite and non-negative"),
        (["--work-budget", "-5"], "work_budget must be at least 0"),
    ],
)
def test_plan_refuses_out_of_range_options(tmp_path, capsys, extra, message):
    args = [
        *PLAN_GPTOSS,
        "--model",
        "gpt-oss-20b",
        "--out",
        str(tmp_path / "p.json"),
    ]
    assert main(args + extra) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_plan_work_budget_is_deterministic(tmp_path):
    def run(name: str, *extra: str) -> str:
        out = tmp_path / name
        args = [*PLAN_GPTOSS, "--model", "gpt-oss-20b", "--out", str(out)]
        assert main([*args, *extra]) == 0
        return out.read_text()

    assert run("a.json", "--work-budget", "20000") == run("b.json", "--work-budget", "20000")
    assert json.loads(run("c.json", "--time-budget", "0"))["physical_to_logical_map"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-sweep"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["layer"]).split()
    assert header[1:6] == ["contiguous", "round-robin", "EPLB", "greedy", "best"]
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    costs = [float(x) for x in total[1:6]]
    assert costs[4] <= min(costs[:4]) + 1e-9  # the best bound is below every method
    assert (tmp_path / "demo" / "report.md").exists()
    model = ModelPlacement.load(tmp_path / "demo" / "placement.json")
    assert len(model) == 24 and model.num_gpus == 4
    # The headline is held out by answer, with its interval; the written placement's own
    # figures are labelled in-sample, in the file too.
    headline = next(line for line in out.splitlines() if line.startswith("headline:"))
    assert "held-out" in headline and "95% interval" in headline
    assert "each request scored by placements planned on the other requests" in headline
    assert model.settings["cost_basis"] == "in-sample"
    # The SGLang file is the fastest candidate on B = 1 and a typical decode batch, held
    # out, under SGLang's static dispatch, with the engine's redundant-expert setting.
    recommended = next(line for line in out.splitlines() if line.startswith("recommended:"))
    assert "B = 64" in recommended and "held-out, SGLang static dispatch" in recommended
    served = load_placement(tmp_path / "demo" / "placement_sglang.json", num_gpus=4)
    start = next(line for line in out.splitlines() if line.startswith("start SGLang with:"))
    redundant = served.num_gpus * served.slots_per_gpu - 32
    assert f"--ep-num-redundant-experts {redundant}" in start


def test_evaluate_windows_prints_drift(tmp_path, capsys):
    trace = load_trace(GPTOSS20B_DECODE).select_layers([0, 1])
    trace.save(tmp_path / "t.npz")
    model = moefast.plan(trace, 4, 10, holdout=0)
    model.save(tmp_path / "p.json", "json")
    assert (
        main(["evaluate", str(tmp_path / "t.npz"), str(tmp_path / "p.json"), "--windows", "3"]) == 0
    )
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert len(rows) == 3
    part = trace.select_tokens(slice(215, 430))
    assert float(rows[1][2]) == pytest.approx(model.evaluate(part).sum(), abs=5e-4)
    assert "held-out" in out and "in-sample" in out


def test_parser_defaults():
    args = build_parser().parse_args(
        ["plan", "t.npz", "--gpus", "8", "--slots", "5", "--out", "p.json"]
    )
    assert (args.method, args.coverage, args.format) == ("greedy", 0.99, "sglang")


def test_simulate_prints_every_placement_and_plots(tmp_path, capsys):
    small = tmp_path / "small.npz"
    trace = load_trace(GPTOSS20B_DECODE)
    moefast.Trace(trace.topk[:, :2, :], trace.num_experts).save(small)
    args = [
        "simulate",
        str(small),
        "--gpus",
        "4",
        "--slots",
        "9",
        "--batch-sizes",
        "1,8",
        "--steps",
        "20",
        "--batch-aware",
        "4",
        "--out",
        str(tmp_path / "sim"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("greedy", "contiguous", "EPLB", "batch-aware (B=4)"):
        assert sum(line.strip().startswith(name) for line in out.splitlines()) == 2, name
    assert (tmp_path / "sim" / "throughput_latency.png").stat().st_size > 10_000
    assert "SYNTHETIC" not in out
    # The same from a synthetic trace: the header line says so.
    moefast.synthetic_trace(300, 32, 4, 2, seed=0).save(small)
    assert main([*args[:-4], "--batch-aware", "0", "--out", str(tmp_path / "sim")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[SYNTHETIC routing (moefast synth), not a recorded trace] ")


def test_simulate_refuses_infeasible_memory(capsys):
    assert main(["simulate", str(GPTOSS20B_DECODE), "--gpus", "2", "--slots", "3"]) == 2
    assert "cannot hold 32 experts" in capsys.readouterr().err


@pytest.mark.slow
def test_plan_for_batches_writes_a_batch_aware_placement(tmp_path, capsys):
    small = tmp_path / "small.npz"
    trace = load_trace(GPTOSS20B_DECODE)
    moefast.Trace(trace.topk[:, :2, :], trace.num_experts).save(small)
    out = tmp_path / "p.json"
    args = [
        "plan",
        str(small),
        "--gpus",
        "4",
        "--slots",
        "9",
        "--format",
        "json",
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--alpha",
        "100",
        "--beta",
        "1",
    ]
    assert main(args) == 0
    saved = json.loads(out.read_text())
    assert "batch" in json.dumps(saved)
    model = load_placement(out)
    assert [p.slots_used.tolist() for p in model] == [[9] * 4] * 2


def test_plan_refuses_layers_that_are_not_the_models_and_maps_positions(tmp_path, capsys):
    out = tmp_path / "s.json"
    layout = ["--num-layers", "30", "--moe-layers", "5-28", "--method", "round_robin"]
    args = [*PLAN_GPTOSS, *layout, "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "layer ids 0-4 are not MoE layers" in err and "--layers-are-positions" in err
    assert not out.exists()
    assert main([*args, "--layers-are-positions"]) == 0
    rows = json.loads(out.read_text())["physical_to_logical_map"]
    # 4 GPUs x 10 slots, or 8 (no redundant expert) where the serving profile finds it faster.
    width = len(rows[0])
    launch = f"--ep-num-redundant-experts {width - 32} --init-expert-location"
    assert width in (32, 40) and launch in capsys.readouterr().out
    assert len(rows) == 30 and rows[0] == rows[29] == [p % 32 for p in range(width)]


def test_plan_checks_the_file_name_before_the_work(tmp_path, capsys):
    args = [*PLAN_GPTOSS, "--model", "gpt-oss-20b", "--out", str(tmp_path / "p.yaml")]
    assert main(args) == 2
    assert "the sglang engine loads only .json files; name it p.json" in capsys.readouterr().err


def test_evaluate_reads_a_vllm_ascend_file_by_position_with_the_model(tmp_path, capsys):
    out = tmp_path / "a.json"
    plan = [*PLAN_GPTOSS, "--model", "gpt-oss-20b", "--method", "round_robin"]
    assert main([*plan, "--format", "vllm-ascend", "--out", str(out)]) == 0
    assert "expert_map_path" in capsys.readouterr().out
    evaluate = ["evaluate", str(GPTOSS20B_DECODE), str(out), "--no-baselines"]
    assert main([*evaluate, "--model", "gpt-oss-20b"]) == 0
