"""Mutation fuzzing of every reader and placement format: valid files, then truncated,
bit-flipped, with tokens inserted, numbers made huge, negative, fractional or non-finite,
values of the wrong type, deep nesting. Only ValueError or TypeError may escape a reader
(or the command line: status 0 or 2 and one line), and no file may make it allocate more
than its size warrants (the address space is capped while the mutants are read)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import re
import resource
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import moefast as mf
import numpy as np
import pytest
import yaml
from moefast.cli import main
from moefast.io.engines import load_placement
from moefast.placement import ModelPlacement
from support.fuzz import COUNTS, MUTATIONS, SEED

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

NUMBERS = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?")
TOKENS = [
    b"1e400", b"-1e400", b"NaN", b"Infinity", b"-1", b"1.5", b"true", b"null", b'"x"',
    b"[]", b"{}", b"[", b"{", b"}", b"]", b",", b":", b"3000000000", b"99999999999999999999999",
    b"\xff\xfe", b"\x00", b".inf", b"- ", b"&a", b"*a", b"!!python/object", b"0" * 5000,
]  # fmt: skip
REPLACEMENTS = [
    b"1e400", b"-1e400", b"NaN", b"-7", b"2.5", b"true", b'"3"', b"null", b"[1]", b"{}",
    b"1e30", b"3000000000", b"50000000", b"18446744073709551615", b"0", b"65535",
]  # fmt: skip


def mutants(seed_file: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """MUTATIONS mutants of each kind."""
    n = len(seed_file)
    for _ in range(MUTATIONS):
        yield "truncate", seed_file[: rng.randrange(n)]
        data = bytearray(seed_file)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        yield "bit flips", bytes(data)
        at = rng.randrange(n + 1)
        yield "insert", seed_file[:at] + rng.choice(TOKENS) + seed_file[at:]
        cut = rng.randrange(n)
        yield "delete", seed_file[:cut] + seed_file[cut + rng.randint(1, 16) :]
        numbers = list(NUMBERS.finditer(seed_file))
        if numbers:
            m = rng.choice(numbers)
            yield "number", seed_file[: m.start()] + rng.choice(REPLACEMENTS) + seed_file[m.end() :]
        depth = rng.choice([10, 1000, 100_000])
        yield "nesting", b"[" * depth + seed_file + b"]" * depth


@contextlib.contextmanager
def capped_memory(extra: int = 4 << 30) -> Iterator[None]:
    """The address space capped at its current size plus `extra` while reading mutants:
    a file that makes a reader allocate gigabytes fails with MemoryError (a finding)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = pages * resource.getpagesize() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def fuzz(
    tmp_path: Path,
    name: str,
    seed_file: bytes,
    read: Callable[[Path], object],
    cli: Callable[[Path], list[str]] | None = None,
) -> None:
    """Reads every mutant of `seed_file` (written as tmp_path/name) with `read`, and a
    sample through the command line; fails on any other exception than ValueError or
    TypeError, or a CLI status other than 0 and 2, or an error of more than one line."""
    rng = random.Random(f"{SEED}-{name}")
    path = tmp_path / name
    findings = []
    with capped_memory():
        for i, (kind, data) in enumerate(mutants(seed_file, rng)):
            path.write_bytes(data)
            COUNTS["mutated files"] += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # dropped-token warnings are fine
                    read(path)
            except (ValueError, TypeError):
                pass
            except Exception as err:
                findings.append((kind, data[:200], f"{type(err).__name__}: {err}"[:300]))
            if cli is not None and i % 7 == 0:
                out, err = io.StringIO(), io.StringIO()
                with (
                    contextlib.redirect_stdout(out),
                    contextlib.redirect_stderr(err),
                    warnings.catch_warnings(),
                ):
                    warnings.simplefilter("ignore")
                    try:
                        code = main(cli(path))
                    except Exception as exc:
                        code = f"{type(exc).__name__}: {exc}"[:300]
                text = err.getvalue().strip()
                # Progress lines may come first; the error is one line, and no traceback.
                errors = [line for line in text.splitlines() if ": error: " in line]
                bad_error = len(errors) != 1 or "Traceback" in text
                if code not in (0, 2) or (code == 2 and bad_error):
                    findings.append((kind, data[:200], f"CLI {code}: {text[:300]}"))
    assert not findings, findings[:5]


@pytest.fixture(scope="module")
def seed_trace() -> mf.Trace:
    return mf.synthetic_trace(40, 12, 3, 2, seed=3)


def test_npz_traces(tmp_path, seed_trace):
    seed_trace.save(tmp_path / "seed.npz")
    seed = (tmp_path / "seed.npz").read_bytes()
    fuzz(tmp_path, "t.npz", seed, mf.load_trace, lambda p: ["inspect", str(p)])


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


ARRAY_VALUES = [
    np.array([[[0, 1]], [[1, 2]]]),
    np.array([[[0.5, 1.0]]]),
    np.array([[[True, False]]]),
    np.array([[["a", "b"]]]),
    np.zeros((0, 1, 2), dtype=np.int64),
    np.zeros((1, 0, 2), dtype=np.int64),
    np.array([[[0, 3_000_000_000]]], dtype=np.int64),
    np.array([[[2**64 - 1, 0]]], dtype=np.uint64),
    np.array(5),
    np.array([1.7]),
    np.array([np.nan, 1.0]),
    np.array([-1.0, 1.0]),
    np.array([1e308, 1e308]),
    np.array([50_000_000]),
    np.array([3, 3]),
    np.array(2**40),
    np.array(-3),
]


def test_npz_traces_of_wrong_arrays(tmp_path):
    """Structure-aware: each field replaced by arrays of wrong dtype, shape or value."""
    rng = random.Random(f"{SEED}-npz-fields")
    path = tmp_path / "t.npz"
    findings = []
    base = {"topk": np.array([[[0, 1]], [[1, 2]]]), "num_experts": np.array(4)}
    for _ in range(MUTATIONS * 4):
        arrays = dict(base)
        for field in rng.sample(["topk", "num_experts", "layer_ids", "weights"], rng.randint(1, 3)):
            arrays[field] = rng.choice(ARRAY_VALUES)
        path.write_bytes(npz_bytes(**arrays))
        COUNTS["mutated files"] += 1
        try:
            mf.load_trace(path)
        except (ValueError, TypeError):
            pass
        except Exception as err:
            findings.append((sorted(arrays), f"{type(err).__name__}: {err}"[:300]))
    assert not findings, findings[:5]


def test_jsonl_traces(tmp_path, seed_trace):
    lines = []
    for t in range(6):
        for position, layer in enumerate(seed_trace.layer_ids):
            lines.append(
                json.dumps(
                    {
                        "request_id": t % 2,
                        "token_idx": t,
                        "layer": layer,
                        "experts": seed_trace.topk[t, position].tolist(),
                        "gating_probs": [0.5] * seed_trace.k,
                    }
                )
            )
    seed = ("\n".join(lines) + "\n").encode()
    fuzz(tmp_path, "t.jsonl", seed, mf.load_trace, lambda p: ["inspect", str(p)])


def test_fingerprint_traces(tmp_path, seed_trace):
    answer = {
        "router_data": [
            {
                f"token_{t}": {
                    f"layer_{layer}": {"selected_experts": seed_trace.topk[t, i].tolist()}
                    for i, layer in enumerate(seed_trace.layer_ids)
                }
            }
            for t in range(5)
        ]
    }
    seed = json.dumps([answer, answer]).encode()
    fuzz(tmp_path, "f.json", seed, lambda p: mf.load_trace(p, format="fingerprint"))


def test_expert_loads(tmp_path):
    counts = {"logical_count": [[[3, 0, 5, 1], [2, 2, 2, 2]], [[1, 1, 0, 0], [0, 4, 4, 0]]]}
    fuzz(tmp_path, "l.json", json.dumps(counts).encode(), mf.load_expert_load)
    buffer = io.BytesIO()
    np.save(buffer, np.arange(12.0).reshape(3, 4))
    fuzz(
        tmp_path,
        "l.npy",
        buffer.getvalue(),
        mf.load_expert_load,
        lambda p: ["synth", "--experts", "4", "--k", "2", "--layers", "2", "--tokens", "50",
                   "--load", str(p), "--out", str(p.with_suffix(".out.npz"))],
    )  # fmt: skip


def test_trtllm_statistics(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    folder = tmp_path / "stats"
    folder.mkdir()
    safetensors.save_file(
        {"0_3": np.array([1, 2, 3, 4], dtype=np.int64), "1_3": np.array([0, 1, 0, 1])},
        str(folder / "rank0.safetensors"),
    )
    meta = json.dumps({"num_experts": 4, "num_experts_per_token": 2}).encode()
    rng = random.Random(f"{SEED}-trtllm")
    findings = []
    seed_tensors = (folder / "rank0.safetensors").read_bytes()
    with capped_memory():
        for (kind, data), (_, tensors) in zip(
            mutants(meta, rng), mutants(seed_tensors, rng), strict=False
        ):
            for meta_bytes, tensor_bytes in ((data, seed_tensors), (meta, tensors)):
                (folder / "meta_info.json").write_bytes(meta_bytes)
                (folder / "rank0.safetensors").write_bytes(tensor_bytes)
                COUNTS["mutated files"] += 1
                try:
                    mf.load_expert_load(folder)
                except (ValueError, TypeError):
                    pass
                except Exception as err:
                    findings.append((kind, f"{type(err).__name__}: {err}"[:300]))
    assert not findings, findings[:5]


def seed_model() -> ModelPlacement:
    placements = [
        mf.optimize(mf.synthetic_trace(200, 8, 2, 1, seed=s).table(0), 2, 5) for s in (1, 2)
    ]
    return ModelPlacement(placements, 5, [1, 3], [1.25, 1.5], [1.0, 1.0], {"method": "greedy"})


@pytest.mark.parametrize("fmt", ["json", "sglang", "eplb", "trtllm", "vllm-ascend"])
def test_placement_files(tmp_path, fmt):
    name = "p.yaml" if fmt == "trtllm" else "p.json"
    seed_model().save(tmp_path / name, fmt, num_layers=4, moe_layers=[1, 3])
    seed = (tmp_path / name).read_bytes()
    trace = tmp_path / "t.npz"
    mf.synthetic_trace(100, 8, 2, 2, seed=1).save(trace)

    def read(path: Path) -> object:
        return load_placement(path, num_gpus=None if fmt in ("json", "eplb", "vllm-ascend") else 2)

    def cli(path: Path) -> list[str]:
        return ["evaluate", str(trace), str(path), "--gpus", "2", "--no-baselines"]

    fuzz(tmp_path, name, seed, read, cli)


WRONG_VALUES = [
    1.5, True, "2", None, [], {}, [[]], 1e30, -1, 2**70, float("inf"), float("nan"),
    [1.5], ["a"], [None], [[0, 1], [2]], {"0": 1}, 50_000_000, 3_000_000_000,
]  # fmt: skip


def _paths(value, prefix=()):
    """Every (path, value) of a parsed JSON/YAML document."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:6]):
            yield from _paths(v, (*prefix, i))


def _replace(document, where, new):
    if not where:
        return new
    document = copy.deepcopy(document)
    node = document
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = new
    return document


@pytest.mark.parametrize("fmt", ["json", "sglang", "eplb", "trtllm", "vllm-ascend"])
def test_placement_values_of_wrong_types(tmp_path, fmt):
    """Structure-aware: every value of a placement file replaced by one of another type
    or out of range."""
    name = "p.yaml" if fmt == "trtllm" else "p.json"
    path = tmp_path / name
    seed_model().save(path, fmt, num_layers=4, moe_layers=[1, 3])
    document = yaml.safe_load(path.read_text())
    places = [p for p, _ in _paths(document)]
    rng = random.Random(f"{SEED}-{fmt}-values")
    findings = []
    for _ in range(MUTATIONS * 4):
        where = rng.choice(places)
        new = rng.choice(WRONG_VALUES)
        mutated = _replace(document, where, new)
        text = yaml.safe_dump(mutated) if fmt == "trtllm" else json.dumps(mutated)
        path.write_text(text)
        COUNTS["mutated files"] += 1
        try:
            load_placement(path, num_gpus=None if fmt in ("json", "eplb", "vllm-ascend") else 2)
        except (ValueError, TypeError):
            pass
        except Exception as err:
            findings.append((where, new, f"{type(err).__name__}: {err}"[:300]))
    assert not findings, findings[:5]


def test_sglang_dumps_as_dicts():
    """The per_token conversion on dicts of lists (no torch needed): fields of wrong types."""
    from moefast.io.readers.sglang import trace_from_sglang_per_token

    ids = np.array([[[0, 1], [2, 3]], [[-1, -1], [-1, -1]]]).tolist()
    base = {
        "records": [{"forward_pass_id": 0, "topk_ids_of_layer": ids}],
        "last_physical_to_logical_map": [[0, 1, 2, 3], [3, 2, 1, 0]],
    }
    places = [p for p, _ in _paths(base)]
    rng = random.Random(f"{SEED}-sglang")
    findings = []
    for _ in range(MUTATIONS * 4):
        dump = _replace(base, rng.choice(places), rng.choice(WRONG_VALUES))
        COUNTS["mutated files"] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trace_from_sglang_per_token([dump])
        except (ValueError, TypeError):
            pass
        except Exception as err:
            findings.append(f"{type(err).__name__}: {err}"[:300])
    assert not findings, findings[:5]


def test_zip_members_of_the_wrong_kind(tmp_path):
    """npz files with members that are not .npy, duplicate names, or a compression numpy
    does not write."""
    path = tmp_path / "t.npz"
    cases = []
    for compression in (
        zipfile.ZIP_STORED,
        zipfile.ZIP_DEFLATED,
        zipfile.ZIP_BZIP2,
        zipfile.ZIP_LZMA,
    ):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression) as archive:
            archive.writestr("topk.npy", npz_member(np.array([[[0, 1]]])))
            archive.writestr("num_experts.npy", npz_member(np.array(2)))
            archive.writestr("notes.txt", b"hello")
        cases.append(buffer.getvalue())
    findings = []
    for data in cases:
        path.write_bytes(data)
        COUNTS["mutated files"] += 1
        try:
            mf.load_trace(path)
        except (ValueError, TypeError):
            pass
        except Exception as err:
            findings.append(f"{type(err).__name__}: {err}"[:300])
    assert not findings, findings


def npz_member(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


ARROW_META = {
    "moefast.format": [b"moefast-trace/2", b"", b"x" * 1000],
    "moefast.num_experts": [b"0", b"-1", b"65536", b"1e9", b"2.5", b"99999999999999999999", b""],
    "moefast.k": [b"0", b"1", b"3", b"17", b"-2", b"1.0", b"true"],
    "moefast.layer_ids": [
        b"[]", b"[0, 0]", b"[1]", b"[-1]", b"[10000]", b"[1.5]", b'"0"', b"{}", b"null",
        b"[" * 5000 + b"]" * 5000, b"[0, 1, 2]", b"[true]",
    ],
}  # fmt: skip


def arrow_seed(path: Path, trace: mf.Trace) -> None:
    from moefast.io.streaming import convert

    trace.save(path.with_suffix(".npz"))
    convert(path.with_suffix(".npz"), path, chunk_tokens=16)
    path.with_suffix(".npz").unlink()


def read_arrow_everywhere(path: Path) -> None:
    """Every way an Arrow trace is read: whole, in chunks, by streamed tables."""
    from moefast.io.streaming import iter_trace, stream_tables

    mf.load_trace(path)
    for _ in iter_trace(path, chunk_tokens=7):
        pass
    for _ in stream_tables(path, chunk_tokens=5):
        pass


def test_arrow_traces(tmp_path, seed_trace):
    pytest.importorskip("pyarrow")
    trace = mf.Trace(
        seed_trace.topk, seed_trace.num_experts, seed_trace.layer_ids,
        np.arange(1.0, 41.0), np.arange(40) // 4,
    )  # fmt: skip
    arrow_seed(tmp_path / "seed.arrow", trace)
    seed = (tmp_path / "seed.arrow").read_bytes()
    fuzz(tmp_path, "t.arrow", seed, read_arrow_everywhere, lambda p: ["inspect", str(p)])


def test_arrow_metadata(tmp_path, seed_trace):
    """Structure-aware: each metadata value of a valid Arrow trace replaced."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc  # noqa: F401

    arrow_seed(tmp_path / "seed.arrow", seed_trace)
    table = pa.ipc.open_file(str(tmp_path / "seed.arrow")).read_all()
    base = dict(table.schema.metadata)
    rng = random.Random(f"{SEED}-arrow-meta")
    path = tmp_path / "t.arrow"
    findings = []
    with capped_memory():
        for _ in range(MUTATIONS * 4):
            meta = dict(base)
            for key in rng.sample(sorted(ARROW_META), rng.randint(1, 2)):
                meta[key.encode()] = rng.choice(ARROW_META[key])
            mutated = table.replace_schema_metadata(meta)
            if rng.random() < 0.3:  # a column renamed or dropped as well
                names = list(mutated.schema.names)
                names[rng.randrange(len(names))] = rng.choice(["weights", "note", "layer_9"])
                mutated = mutated.rename_columns(names)
            with pa.ipc.new_file(str(path), mutated.schema) as writer:
                writer.write_table(mutated)
            COUNTS["mutated files"] += 1
            try:
                read_arrow_everywhere(path)
            except (ValueError, TypeError):
                pass
            except Exception as err:
                findings.append((meta, f"{type(err).__name__}: {err}"[:300]))
    assert not findings, findings[:5]


TRTLLM_KEYS = [
    "0_1", "0_01", "00_1", "0_1junk", "x_1", "0_", "_1", "1_1", "0_1234567890", "0_9999",
    "0_10000", "999999999999_1", "0__1", "0_1\n", "\u0660_\u0661", "0_2",
]  # fmt: skip
TRTLLM_VALUES = [
    np.array([[0, 1], [2, 3]], dtype=np.int32),
    np.array([[0, 1]], dtype=np.int64),
    np.array([[2**63, 1]], dtype=np.uint64),
    np.array([[-1, 1]], dtype=np.int32),
    np.array([[0, 99]], dtype=np.int32),
    np.array([[0.5, 1.0]], dtype=np.float32),
    np.zeros((0, 2), dtype=np.int32),
    np.zeros((2,), dtype=np.int32),
    np.arange(4, dtype=np.int64),
    np.array([[[0, 1]]], dtype=np.int32),
]


@pytest.mark.parametrize("raw", [True, False])
def test_trtllm_folders_of_hostile_keys_and_tensors(tmp_path, raw):
    """Raw (per-token ids) and count folders whose keys and tensors are drawn from hostile
    ones, read whole, streamed and as loads."""
    safetensors = pytest.importorskip("safetensors.numpy")
    from moefast.io.streaming import iter_trace

    folder = tmp_path / "stats"
    folder.mkdir()
    (folder / "meta_info.json").write_text('{"num_experts": 4, "num_experts_per_token": 2}')
    name = "rank{}_raw.safetensors" if raw else "rank{}.safetensors"
    rng = random.Random(f"{SEED}-trtllm-keys-{raw}")
    findings = []
    with capped_memory():
        for _ in range(MUTATIONS * 4):
            for f in folder.glob("rank*"):
                f.unlink()
            for r in range(rng.randint(1, 2)):
                keys = rng.sample(TRTLLM_KEYS, rng.randint(1, 4))
                tensors = {k: rng.choice(TRTLLM_VALUES) for k in keys}
                safetensors.save_file(tensors, str(folder / name.format(r)))
            COUNTS["mutated files"] += 1
            readers = (
                (mf.load_trace, lambda p: list(iter_trace(p, chunk_tokens=1)))
                if raw
                else (mf.load_expert_load,)
            )
            for read in readers:
                try:
                    read(folder)
                except (ValueError, TypeError):
                    pass
                except Exception as err:
                    findings.append((keys, f"{type(err).__name__}: {err}"[:300]))
    assert not findings, findings[:5]
