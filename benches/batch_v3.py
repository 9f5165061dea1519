"""The batch-aware plan of a whole DeepSeek-V3-size model, shared by
`bench_v3_batch.py` and the script that records its reference:

    python benches/batch_v3.py [LAYERS]    (writes distinct_v3_batch_reference.json)

Layers are planned with `moefast.plan(objective="batch")` at B = 64 on the distinct V3
workload (`tests/workloads.distinct_v3_model`, 32 GPUs x 9 slots), and each layer's
placement is scored by the mean step time of a fixed held set of batches drawn from its
full table with a seed the search never uses (`moefast.simulate`: the solver of
`batch_time`), so a faster search is compared with the recorded one on the same batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import moefast as mf
import numpy as np

GPUS, SLOTS, BATCH = 32, 9, 64
#: DeepSeek-V3 expert on an H100 (docs/cost-model.md#a-batch; benches/bench_topology.py).
COST = mf.CostModel(alpha=47.0, beta=0.11, p=1.5)
#: The held batches each layer is scored on.
HELD_SEED, HELD_STEPS = 20_261_130, 512
REFERENCE = Path(__file__).parent / "distinct_v3_batch_reference.json"


def plan_batch(trace: mf.Trace) -> tuple[list[mf.Placement], float, float]:
    """The batch-aware plan of `trace`: placements, wall and CPU seconds of the process."""
    wall, cpu = time.perf_counter(), time.process_time()
    model = mf.plan(
        trace,
        GPUS,
        SLOTS,
        objective=mf.Objective("batch", BATCH, COST),
        evaluation=mf.Evaluation(holdout=0),
        progress=False,
    )
    return list(model), time.perf_counter() - wall, time.process_time() - cpu


def held_step_times(trace: mf.Trace, placements: list[mf.Placement]) -> list[float]:
    """Mean step time (us) of each layer's placement on its held batches."""
    out = []
    for layer, placement in enumerate(placements):
        table = mf.SubsetTable.from_topk(trace.topk[:, layer, :], trace.num_experts)
        (result,) = mf.simulate(
            table, placement, [BATCH], COST, seed=HELD_SEED + layer, steps=HELD_STEPS
        )
        out.append(float(result["mean_step_time"]))
    return out


def main(layers: int) -> None:
    from support.workloads import distinct_v3_model

    trace = distinct_v3_model(layers)
    placements, wall, cpu = plan_batch(trace)
    times = held_step_times(trace, placements)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    record = {
        "what": (
            "per-layer mean step time (us) on held batches of the batch-aware plan before"
            f" the whole-model target (commit {commit}): moefast.plan(objective='batch',"
            f" batch_size={BATCH}, cost_model={COST}, holdout=0) on"
            f" workloads.distinct_v3_model({layers}), {GPUS} GPUs x {SLOTS} slots;"
            f" held batches: simulate(seed={HELD_SEED} + layer, steps={HELD_STEPS})"
        ),
        "commit": commit,
        "layers": layers,
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": round(wall, 1),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "step_times": [round(t, 4) for t in times],
    }
    REFERENCE.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{layers} layers: {wall:.0f} s wall, {cpu:.0f} s CPU; mean step {np.mean(times):.3f} us")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16)
