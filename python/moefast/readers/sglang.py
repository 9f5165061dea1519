"""SGLang's expert-distribution recordings (``--expert-distribution-recorder-mode``).

``per_token`` dumps (one ``.pt`` per rank) hold ``records``, each with ``topk_ids_of_layer``
int [model layers, tokens, k] of *physical* expert ids, and ``last_physical_to_logical_map``
[layers, P] to turn them into logical ids. Dense layers and unused buffer rows hold -1 (or 0s
before the first reset), so a layer counts as MoE if some token has k distinct valid ids in it.
``stat`` dumps and the published JSON statistics hold ``logical_count`` [steps, layers, E] or
[layers, E]: per-expert loads without co-activation.

The conversion functions take plain dicts of numpy arrays or lists (or torch tensors), so
they run without torch; only opening a ``.pt`` file needs it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moefast.readers._errors import malformed, require
from moefast.readers._loading import read_json, to_numpy
from moefast.trace import Trace


def _valid_rows(ids: np.ndarray) -> np.ndarray:
    """bool [..., tokens]: rows of k distinct non-negative ids."""
    ordered = np.sort(ids, axis=-1)
    distinct = (ordered[..., 1:] != ordered[..., :-1]).all(axis=-1)
    return distinct & (ordered[..., 0] >= 0)


def _position_runs(positions: Any, tokens: int) -> np.ndarray:
    """int [tokens]: 0, 1, ... numbering runs of consecutive positions (all 0 without them)."""
    try:
        pos = np.asarray(
            positions.tolist() if hasattr(positions, "tolist") else positions, dtype=np.int64
        )
    except (TypeError, ValueError):
        pos = None
    if pos is None or pos.shape != (tokens,):
        return np.zeros(tokens, dtype=np.int64)
    return np.r_[0, np.cumsum(pos[1:] != pos[:-1] + 1)].astype(np.int64)


def trace_from_sglang_per_token(
    dumps: Sequence[Mapping[str, Any]],
    num_experts: int | None = None,
    source: Path | str = "<sglang per_token dump>",
) -> Trace:
    """A trace from the dicts of one or more ranks' ``per_token`` dumps.

    Tokens of all ranks and forward passes are concatenated; a record repeated by several
    ranks (tensor parallelism without DP attention: same ``forward_pass_id``, same ids) is
    kept once. Tokens without a valid top-k in some MoE layer are dropped with a warning.

    The records carry no request id, so ``request_ids`` number the runs of consecutive
    ``positions`` within a forward pass (one prompt chunk of one request in prefill, one token
    per request in decode), or whole forward passes where ``positions`` is missing: held-out
    splits then never cut a prompt chunk.
    """
    path = Path(str(source))
    blocks: list[np.ndarray] = []
    runs: list[np.ndarray] = []
    next_run = 0
    seen: dict[Any, list[np.ndarray]] = {}
    for d, dump in enumerate(dumps):
        if not isinstance(dump, Mapping) or "records" not in dump:
            raise malformed(path, f"dump {d} has no 'records': is it a per_token dump?")
        p2l = dump.get("last_physical_to_logical_map")
        p2l = (
            None
            if p2l is None
            else to_numpy(p2l, path, "last_physical_to_logical_map").astype(np.int64)
        )
        for r, record in enumerate(dump["records"]):
            if "topk_ids_of_layer" not in record:
                raise malformed(path, f"dump {d} record {r} has no 'topk_ids_of_layer'")
            ids = to_numpy(record["topk_ids_of_layer"], path, "topk_ids_of_layer").astype(np.int64)
            if ids.ndim != 3:
                raise malformed(
                    path,
                    f"dump {d} record {r}: topk_ids_of_layer must be [layers, tokens, k],"
                    f" got shape {ids.shape}",
                )
            if ids.shape[1] == 0:
                continue
            if p2l is not None:
                if p2l.ndim != 2 or p2l.shape[0] != ids.shape[0]:
                    raise malformed(
                        path,
                        f"dump {d}: last_physical_to_logical_map has shape {p2l.shape}"
                        f" for {ids.shape[0]} layers",
                    )
                if ids.max() >= p2l.shape[1]:
                    raise malformed(
                        path,
                        f"dump {d} record {r}: physical id {ids.max()} >= {p2l.shape[1]} slots",
                    )
                layer_index = np.arange(ids.shape[0])[:, None, None]
                ids = np.where(ids >= 0, p2l[layer_index, np.maximum(ids, 0)], -1)
            key = record.get("forward_pass_id")
            if key is not None:
                twins = seen.setdefault(int(key), [])
                if any(t.shape == ids.shape and np.array_equal(t, ids) for t in twins):
                    continue
                twins.append(ids)
            blocks.append(ids)
            run = _position_runs(record.get("positions"), ids.shape[1])
            runs.append(run + next_run)
            next_run += int(run.max()) + 1
    if not blocks:
        raise malformed(path, "no record holds any token")
    shapes = {(b.shape[0], b.shape[2]) for b in blocks}
    if len(shapes) != 1:
        raise malformed(path, f"records disagree on (layers, k): {sorted(shapes)}")
    ids = np.concatenate(blocks, axis=1)  # [layers, tokens, k]
    valid = _valid_rows(ids)  # [layers, tokens]
    moe_layers = np.nonzero(valid.any(axis=1))[0]
    if moe_layers.size == 0:
        raise malformed(path, "no layer holds a valid top-k")
    keep = valid[moe_layers].all(axis=0)
    dropped = int((~keep).sum())
    if dropped:
        warnings.warn(
            f"{path}: dropped {dropped} of {keep.size} tokens without a valid top-k"
            " in every MoE layer",
            stacklevel=2,
        )
    topk = ids[moe_layers][:, keep, :].transpose(1, 0, 2)
    if topk.shape[0] == 0:
        raise malformed(path, "no token has a valid top-k in every MoE layer")
    highest = int(topk.max()) + 1
    if num_experts is None:
        num_experts = int(p2l.max()) + 1 if p2l is not None else highest
    if highest > num_experts:
        raise malformed(
            path, f"expert id {highest - 1} out of range for num_experts = {num_experts}"
        )
    request_ids = np.concatenate(runs)[keep]
    return Trace(topk, num_experts, [int(x) for x in moe_layers], request_ids=request_ids)


def expert_load_from_logical_count(
    count: Any, source: Path | str = "<logical_count>"
) -> np.ndarray:
    """float [layers, E] from ``logical_count`` [layers, E] or [steps, layers, E]
    (summed over steps)."""
    path = Path(str(source))
    count = to_numpy(count, path, "logical_count")
    if count.dtype.kind not in "iuf" or count.ndim not in (2, 3):
        raise malformed(
            path,
            "logical_count must be numbers [layers, E] or [steps, layers, E],"
            f" got {count.dtype} {count.shape}",
        )
    count = count.astype(np.float64)
    if count.ndim == 3:
        count = count.sum(axis=0)
    if not np.all(np.isfinite(count)) or (count < 0).any():
        raise malformed(path, "logical_count holds negative or non-finite counts")
    return count


def _torch_load(path: Path) -> Any:
    torch = require("torch", "reading SGLang .pt dumps")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise malformed(path, f"torch.load failed ({err})") from err


def dump_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.pt"))
        if not files:
            raise malformed(path, "folder holds no .pt dump")
        return files
    return [path]


def read_sglang_trace(path: Path, num_experts: int | None = None) -> Trace:
    """One ``per_token`` ``.pt`` dump, or a folder of them (one per rank)."""
    files = dump_files(path)
    return trace_from_sglang_per_token([_torch_load(f) for f in files], num_experts, path)


def read_sglang_stat_load(path: Path) -> np.ndarray:
    """Per-expert load of ``stat`` ``.pt`` dumps (ranks' counts are summed)."""
    loads: list[np.ndarray] = []
    for f in dump_files(path):  # at least one
        dump = _torch_load(f)
        if not isinstance(dump, Mapping) or "logical_count" not in dump:
            raise malformed(f, "no 'logical_count': is it a stat dump?")
        load = expert_load_from_logical_count(dump["logical_count"], f)
        if loads and loads[0].shape != load.shape:
            raise malformed(
                f, f"logical_count shape {load.shape} differs from other ranks' {loads[0].shape}"
            )
        loads.append(load)
    return np.sum(loads, axis=0)


def read_logical_count_json(path: Path) -> np.ndarray:
    data = read_json(path)
    if not isinstance(data, dict) or "logical_count" not in data:
        raise malformed(path, "no 'logical_count' key")
    try:
        count = np.asarray(data["logical_count"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise malformed(
            path, f"'logical_count' is not a rectangular array of numbers ({err})"
        ) from err
    return expert_load_from_logical_count(count, path)
