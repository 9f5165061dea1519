"""Values at and beyond the limits: topologies, cost models and batch samples (each call in
a subprocess under an address-space cap, so an abort or a huge allocation is a finding,
not a dead test run), model layouts, executors that fail in each way, and command lines
whose output paths are inputs, folders or existing files. Only ValueError or TypeError
(RuntimeError naming the worker, for executors) may come out; the CLI exits 0 or 2 with
one line and never changes an input."""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import Executor, Future

import moefast as mf
import numpy as np
import pytest
from moefast.cli import main
from moefast.io.layouts import ModelLayout, model_layout
from support.fuzz import CAP_BYTES, COUNTS, LIMIT_CASES, MUTATIONS, PATH_CASES, SEED

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

#: Integers at and beyond the limits of counts, GPUs, batch sizes and samples.
EDGES = [
    -(2**64), -1, 0, 1, 2, 3, 1023, 1024, 1025, 2**24, 2**24 + 1, 2**28, 2**31, 2**63 - 1,
    2**63, 2**64, 1.5, True, None, "2", float("nan"), float("inf"),
]  # fmt: skip
REALS = [0.0, -0.0, -1.0, 1e-300, 1e300, float("inf"), float("nan"), 2**1100, True, "1", None]

#: The child: runs cases one by one, printing each outcome before the next starts, so a
#: case that kills the process is known (the parent resumes after it).
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (CAP, resource.RLIM_INFINITY))
    import numpy as np
    import moefast as mf
    from moefast.search.node import place, place_batch
    from moefast.topology.times import Topology, Transfer, batch_time, sample_batch_time

    table = mf.SubsetTable.from_topk([[0, 1], [2, 3], [0, 2]], 4)
    start = mf.Placement.from_lists([[0], [0], [1], [1]], 2)

    def run(case):
        kind, v = case["kind"], case["values"]
        if kind == "comm_us":
            return Topology.preset(gpus_per_node=2).comm_us(*v)
        if kind == "topology":
            t = Topology.preset(gpus_per_node=v[0])
            return Topology(v[1], Transfer(v[2], (v[3], 1.0, 1.0), (1.0, v[4], 1.0)), t.combine)
        if kind == "transfer":
            free = Topology.free(2)
            t = Topology(2, Transfer(v[0], (v[1], 0.0, 0.0), (v[2], v[3], 1.0)), free.combine)
            return batch_time(np.array([[0, 1], [2, 3]]), start, t, mf.CostModel(1.0, 1.0))
        if kind == "cost_model":
            return mf.CostModel(v[0], v[1], p=v[2])
        if kind == "place_batch":
            return place_batch(table, [start], 4, topology=Topology.preset(gpus_per_node=2),
                               cost_model=mf.CostModel(1.0, 1.0), batch_size=v[0],
                               num_batches=v[1], max_evaluations=2)
        if kind == "sample_batch_time":
            return sample_batch_time(table, start, topology=Topology.free(2),
                                     cost_model=mf.CostModel(1.0, 1.0), batch_size=v[0],
                                     num_batches=v[1])
        if kind == "place":
            return place(table, [start], 4, topology=Topology.preset(gpus_per_node=v[0]),
                         max_evaluations=v[1])
        raise AssertionError(kind)

    for line in sys.stdin:
        case = json.loads(line)
        print("start", case["i"], flush=True)
        try:
            run(case)
            outcome = "ok"
        except (ValueError, TypeError):
            outcome = "refused"
        except Exception as err:
            outcome = f"finding {type(err).__name__}: {err}"[:300]
        print("done", case["i"], outcome, flush=True)
    """
).replace("CAP", str(CAP_BYTES))


def _value(rng: random.Random, pool: list) -> object:
    value = rng.choice(pool)
    return value if isinstance(value, (int, float, str, type(None))) else str(value)


def limit_cases(rng: random.Random) -> list[dict]:
    kinds = {
        "comm_us": lambda: [rng.choice(EDGES) for _ in range(4)],
        "topology": lambda: [rng.choice(EDGES), rng.choice(EDGES), *rng.sample(REALS, 3)],
        "transfer": lambda: [rng.choice(REALS) for _ in range(4)],
        "cost_model": lambda: [rng.choice(REALS) for _ in range(3)],
        "place_batch": lambda: [rng.choice(EDGES[:14]), rng.choice([None, 1, 16, 2**20, 2**21])],
        "sample_batch_time": lambda: [rng.choice(EDGES[:14]), rng.choice([None, 1, 2**20])],
        "place": lambda: [rng.choice([1, 2, 4, 3, 0, -1, 2**64]), rng.choice([0, 1, 2**63])],
    }
    cases = []
    for i in range(LIMIT_CASES):
        kind = rng.choice(sorted(kinds))
        cases.append({"i": i, "kind": kind, "values": kinds[kind]()})
    return cases


def run_capped(cases: list[dict]) -> list[tuple[dict, str]]:
    """Runs the cases in capped children; (case, outcome) of each that was neither done
    nor refused, or that killed its child."""
    findings = []
    pending = list(cases)
    while pending:
        lines = "".join(json.dumps(c, allow_nan=True) + "\n" for c in pending)
        child = subprocess.run(
            [sys.executable, "-c", CHILD], input=lines, capture_output=True, text=True, timeout=600
        )
        done = {}
        started = None
        for line in child.stdout.splitlines():
            word, i, *rest = line.split(" ", 2)
            if word == "start":
                started = int(i)
            else:
                done[int(i)] = rest[0] if rest else ""
        for case in pending:
            outcome = done.get(case["i"])
            if outcome is not None and outcome.startswith("finding"):
                findings.append((case, outcome))
        COUNTS["capped subprocess cases"] += len(done)
        if child.returncode == 0:
            break
        # The child died in the case it started last: a finding; resume after it.
        killed = next(c for c in pending if c["i"] == started)
        findings.append((killed, f"child died, status {child.returncode}: {child.stderr[-300:]}"))
        COUNTS["capped subprocess cases"] += 1
        pending = [c for c in pending if c["i"] > started]
    return findings


def test_topologies_cost_models_and_samples_at_the_limits():
    cases = limit_cases(random.Random(f"{SEED}-limits"))
    # The call that aborted: the largest batch with the default sample.
    cases.append({"i": len(cases), "kind": "place_batch", "values": [2**24, None]})
    findings = run_capped(cases)
    assert not findings, findings[:5]


def test_model_layouts_of_hostile_values():
    rng = random.Random(f"{SEED}-layouts")
    values = [*EDGES, [3, 2], [3, 3], [], [3.7], (True, 2), "12", np.array([1, 2]), [10**4]]
    findings = []
    for _ in range(MUTATIONS * 8):
        num_layers, moe_layers = rng.choice(values), rng.choice(values)
        COUNTS["layouts"] += 1
        for make, name in ((model_layout, None), (ModelLayout, "x"), (model_layout, "deepseek-v3")):
            try:
                layout = make(name, num_layers, moe_layers)
            except (ValueError, TypeError):
                continue
            except Exception as err:
                findings.append((num_layers, moe_layers, f"{type(err).__name__}: {err}"[:200]))
                continue
            # What is accepted is exact: ints, as given, within the bounds.
            ok = layout is None or (
                type(layout.num_layers) is int
                and all(type(x) is int for x in layout.moe_layers)
                and layout.moe_layers[-1] < layout.num_layers <= 10_000
            )
            if not ok:
                findings.append((num_layers, moe_layers, f"accepted as {layout}"))
    assert not findings, findings[:5]


class FailingExecutor(Executor):
    """An executor that fails in one way: raising in submit, futures that raise, futures
    of a wrong result, cancelled futures."""

    def __init__(self, how: str) -> None:
        self.how = how

    def submit(self, fn, /, *args, **kwargs):
        if self.how == "submit raises":
            raise RuntimeError("the cluster is gone")
        future: Future = Future()
        if self.how == "raises":
            future.set_exception(OSError("worker lost"))
        elif self.how == "raises ValueError":
            future.set_exception(ValueError("bad input on the worker"))
        elif self.how == "cancelled":
            future.cancel()
            future.set_running_or_notify_cancel()
        else:
            future.set_result({"None": None, "int": 3, "tuple": (1, 2, 3), "str": "x"}[self.how])
        return future


EXECUTORS = [
    "submit raises", "raises", "raises ValueError", "cancelled", "None", "int", "tuple", "str",
]  # fmt: skip


@pytest.mark.parametrize("how", EXECUTORS)
def test_executors_that_fail_in_each_way(tmp_path, how):
    path = tmp_path / "t.npz"
    mf.synthetic_trace(300, 8, 2, 2, seed=1).save(path)
    table = mf.SubsetTable.from_topk([[0, 1], [2, 3]], 8)
    current = mf.plan(mf.synthetic_trace(300, 8, 2, 1, seed=1), 2, 4, progress=False)
    calls = [
        lambda: mf.plan([path], 2, 4, executor=FailingExecutor(how), progress=False),
        lambda: mf.plan([table], 2, 4, executor=FailingExecutor(how), progress=False),
        lambda: mf.plan(
            [table], 2, 4, executor=FailingExecutor(how), current=current, max_moves=2,
            progress=False,
        ),
        lambda: mf.plan([path], 2, 4, executor=object(), progress=False),
    ]  # fmt: skip
    findings = []
    for call in calls:
        COUNTS["executor calls"] += 1
        try:
            call()
            findings.append("no error")
        except (ValueError, TypeError):
            pass
        except RuntimeError as err:
            if "the worker" not in str(err) and "cluster" not in str(err):
                findings.append(f"RuntimeError without the worker: {err}"[:200])
        except Exception as err:
            findings.append(f"{type(err).__name__}: {err}"[:200])
    assert not findings, findings


def path_argvs(rng: random.Random, trace, folder, existing, link) -> list[list[str]]:
    """Command lines whose output is an input, a link to it, a folder, an existing file."""
    outs = [trace, link, folder, folder / ".", existing, folder / "new.json", trace.parent]
    argvs = []
    for _ in range(PATH_CASES):
        out = str(rng.choice(outs))
        argvs.append(
            rng.choice(
                [
                    ["plan", str(trace), "--gpus", "2", "--slots", "4", "--format", "json",
                     "--out", out],
                    ["plan", str(folder), "--gpus", "2", "--slots", "4", "--format", "json",
                     "--out", out],
                    ["plan", str(trace), "--gpus", "2", "--slots", "4", "--format", "json",
                     "--out", str(existing), "--report", out],
                    ["convert", str(trace), "--out", out],
                    ["convert", str(folder), "--out", out],
                    ["synth", "--experts", "8", "--k", "2", "--layers", "2", "--tokens", "40",
                     "--load", str(trace), "--out", out],
                    ["simulate", str(trace), "--gpus", "2", "--slots", "4", "--batch-sizes",
                     "2", "--out", out],
                ]
            )
        )  # fmt: skip
    return argvs


def test_cli_output_paths(tmp_path):
    pytest.importorskip("pyarrow")
    folder = tmp_path / "shards"
    folder.mkdir()
    trace = folder / "t.npz"
    mf.synthetic_trace(40, 8, 2, 2, seed=1).save(trace)
    link = tmp_path / "link.npz"
    link.hardlink_to(trace)
    existing = tmp_path / "existing.json"
    rng = random.Random(f"{SEED}-paths")
    findings = []
    for argv in path_argvs(rng, trace, folder, existing, link):
        existing.write_text("{}")
        for p in folder.iterdir():  # what an earlier case wrote beside the trace
            if p != trace:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        before = trace.read_bytes()
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except Exception as exc:
                code = f"{type(exc).__name__}: {exc}"[:200]
        COUNTS["command lines"] += 1
        text = err.getvalue().strip()
        # Progress lines may come first; the error itself is one line, and no traceback.
        errors = [line for line in text.splitlines() if ": error: " in line]
        if code not in (0, 2) or (code == 2 and (len(errors) != 1 or "Traceback" in text)):
            findings.append((argv, code, text[:200]))
        if trace.read_bytes() != before:
            findings.append((argv, "the input trace was changed"))
            mf.synthetic_trace(40, 8, 2, 2, seed=1).save(trace)
        # An input folder gains no file: the next run would read it as a shard.
        if str(folder) in argv[1:2] and sorted(folder.iterdir()) != [trace]:
            findings.append((argv, f"the input folder gained {sorted(folder.iterdir())}"))
    assert not findings, findings[:5]
