"""Converts the gpt-oss-20b decode traces of GPT-OSS-MoE-ExpertFingerprinting into
moefast's native trace file (python/moefast/data/gptoss20b_decode.npz).

Usage: python scripts/convert_gptoss_traces.py ../shared/data/gptoss20b_expert_fingerprinting
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

NUM_EXPERTS = 32
NUM_LAYERS = 24


def token_rows(example: dict) -> list[list[list[int]]]:
    rows = []
    for entry in example["router_data"]:
        ((_, layers),) = entry.items()
        rows.append([layers[f"layer_{layer}"]["selected_experts"] for layer in range(NUM_LAYERS)])
    return rows


def main(source: Path, out: Path) -> None:
    rows: list[list[list[int]]] = []
    answers: list[int] = []
    for answer, path in enumerate(sorted((source / "examples").glob("*.json"))):
        tokens = token_rows(json.loads(path.read_text()))
        rows.extend(tokens)
        answers.extend([answer] * len(tokens))
    topk = np.asarray(rows, dtype=np.int16)
    assert topk.shape[1:] == (NUM_LAYERS, 4) and topk.min() >= 0 and topk.max() < NUM_EXPERTS
    np.savez_compressed(
        out,
        topk=topk,
        num_experts=np.int64(NUM_EXPERTS),
        layer_ids=np.arange(NUM_LAYERS),
        request_ids=np.asarray(answers, dtype=np.int16),  # which answer each token is from
    )
    print(f"wrote {out}: {topk.shape[0]} tokens x {NUM_LAYERS} layers x top-4")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parents[1] / "python/moefast/data/gptoss20b_decode.npz")
