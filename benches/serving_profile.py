"""Serving-profile bench: every candidate's held-out step time at B = 1, 16, 64, 256 on the
real per-token traces (when /work/shared/data is present) and the bundled trace (moefast's
packaged gpt-oss-20b decode trace), 8 GPUs x 9 slots (5 slots for the bundled 32-expert
trace), H100 calibration presets, under SGLang's static dispatch (the engine's default) and,
beside it, the best replica choice; every candidate also with no redundant expert; the
recommendation, its warnings and ties, and the number of redundant experts.
Run: python benches/serving_profile.py [MAX_EVALUATIONS] [DISPATCH]"""

from __future__ import annotations

import sys
from pathlib import Path

import moefast as mf
from moefast.data import GPTOSS20B_DECODE
from moefast.evaluate.serving import settings_rows
from moefast.planning.profile import ServingProfile
from moefast.report.text_tables import format_table

REAL = Path("/work/shared/data/real_small_traces")
CASES = [
    ("OLMoE layer 0", REAL / "olmoe-1b-7b-0924_kaxitpandya-cerebras-assesment2.npz", "olmoe", 9),
    (
        "Qwen1.5-MoE layer 0",
        REAL / "qwen1.5-moe-a2.7b-chat_kennethwang1221-vllm-expert-profiler.npz",
        "qwen1.5-moe-a2.7b",
        9,
    ),
    ("FLAME-MoE layers 2-9", REAL / "flame-moe-290m_dynande-simulator.npz", "olmoe", 9),
    ("bundled gpt-oss-20b", GPTOSS20B_DECODE, "gpt-oss-20b", 5),
]


def main() -> None:
    profile = ServingProfile(
        (1, 16, 64, 256),
        max_evaluations=int(sys.argv[1]) if len(sys.argv) > 1 else 4000,
        dispatch=sys.argv[2] if len(sys.argv) > 2 else None,  # None: SGLang's static
        compare_best=True,
    )
    for name, path, preset, slots in CASES:
        if not Path(path).exists():
            continue
        trace = mf.load_trace(path)
        cm = mf.CostModel.preset(preset)
        model = mf.plan(trace, 8, slots, profile=profile, objective=mf.Objective(cost_model=cm))
        serving = model.settings["serving"]
        print(f"## {name}: 8 GPUs x {slots} slots, {cm} ({preset} preset), {serving['note']}")
        print(format_table(*settings_rows(serving)))
        for line in serving["warnings"] or [
            "no warning: never slower than the engine default or EPLB beyond the tie tolerance"
        ]:
            print(line)
        for line in serving["ties"]:
            print(line)
        print(serving["headline"])
        print(f"redundant experts: {serving['redundant_experts']}")
        print(flush=True)


if __name__ == "__main__":
    main()
