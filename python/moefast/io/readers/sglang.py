"""SGLang's expert-distribution recordings (``--expert-distribution-recorder-mode``).

``per_token`` dumps (one ``.pt`` per rank) hold ``records``, each with ``topk_ids_of_layer``
int [model layers, tokens, 8] of *physical* expert ids, and ``last_physical_to_logical_map``
[layers, P] to turn them into logical ids. SGLang's buffer is always 8 wide and reset to -1
at every forward pass; it writes a token's k ids into the first k columns, so for k < 8 the
other columns stay -1, and dense layers are all -1. k is the most ids any token has; a layer
counts as MoE if some token has k distinct valid ids in it.
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

from moefast._util.checks import check_field_int, check_int
from moefast.io.readers._errors import malformed, require
from moefast.io.readers._loading import int_array, read_json, to_numpy
from moefast.trace import MAX_EXPERTS, Trace


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

    Tokens of all ranks and forward passes are concatenated, forward pass by forward pass
    (ranks in order within a pass: DP-attention ranks record their own tokens under the
    same forward_pass_id); a record repeated by several
    ranks (tensor parallelism without DP attention: same ``forward_pass_id``, same ids) is
    kept once. Tokens without a valid top-k in some MoE layer are dropped with a warning.

    The records carry no request id, so ``request_ids`` number the runs of consecutive
    ``positions`` within a forward pass (one prompt chunk of one request in prefill, one token
    per request in decode), or whole forward passes where ``positions`` is missing: held-out
    splits then never cut a prompt chunk.
    """
    path = Path(str(source))
    blocks: list[np.ndarray] = []
    pass_ids: list[int | None] = []
    runs: list[np.ndarray] = []
    seen: dict[Any, list[np.ndarray]] = {}
    for d, dump in enumerate(dumps):
        if not isinstance(dump, Mapping) or "records" not in dump:
            raise malformed(path, f"dump {d} has no 'records': is it a per_token dump?")
        p2l = dump.get("last_physical_to_logical_map")
        p2l = None if p2l is None else int_array(p2l, path, "last_physical_to_logical_map")
        if p2l is not None and p2l.size == 0:
            raise malformed(
                path, f"dump {d}: last_physical_to_logical_map has no slots (shape {p2l.shape})"
            )
        if p2l is not None and p2l.size and (p2l.min() < 0 or p2l.max() >= MAX_EXPERTS):
            raise malformed(
                path,
                f"dump {d}: last_physical_to_logical_map holds expert"
                f" {p2l.min() if p2l.min() < 0 else p2l.max()}, out of range [0, {MAX_EXPERTS})",
            )
        records = dump["records"]
        if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
            raise malformed(path, f"dump {d}: 'records' must be a list")
        for r, record in enumerate(records):
            if not isinstance(record, Mapping) or "topk_ids_of_layer" not in record:
                raise malformed(path, f"dump {d} record {r} has no 'topk_ids_of_layer'")
            ids = int_array(record["topk_ids_of_layer"], path, "topk_ids_of_layer")
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
                if hasattr(key, "item"):  # a one-value tensor or array
                    key = key.item()
                key = check_field_int(path, f"dump {d} record {r}: forward_pass_id", key)
                twins = seen.setdefault(key, [])
                if any(t.shape == ids.shape and np.array_equal(t, ids) for t in twins):
                    continue
                twins.append(ids)
            blocks.append(ids)
            pass_ids.append(None if key is None else int(key))
            runs.append(_position_runs(record.get("positions"), ids.shape[1]))
    if not blocks:
        raise malformed(path, "no record holds any token")
    if None not in pass_ids:  # time order: forward passes first, ranks within a pass
        order = sorted(range(len(blocks)), key=lambda i: pass_ids[i])  # type: ignore[arg-type,return-value]
        blocks, runs = [blocks[i] for i in order], [runs[i] for i in order]
    # Runs are numbered within a record: offset them so every record's runs are distinct.
    offsets = np.cumsum([0] + [int(run.max()) + 1 for run in runs[:-1]])
    runs = [run + offset for run, offset in zip(runs, offsets, strict=True)]
    shapes = {(b.shape[0], b.shape[2]) for b in blocks}
    if len(shapes) != 1:
        raise malformed(path, f"records disagree on (layers, k): {sorted(shapes)}")
    ids = np.concatenate(blocks, axis=1)  # [layers, tokens, 8]
    # Columns past the model's top-k stay -1 in SGLang's fixed-width buffer.
    k = int((ids >= 0).sum(axis=2).max())
    if k == 0:
        raise malformed(path, "no layer holds a valid top-k (every id is -1)")
    ids = np.where((ids[:, :, k:] < 0).all(axis=2, keepdims=True), ids[:, :, :k], -1)
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
    else:
        num_experts = check_int("num_experts", num_experts, 1, MAX_EXPERTS)
    if highest > num_experts:
        raise malformed(
            path, f"expert id {highest - 1} out of range for num_experts = {num_experts}"
        )
    request_ids = np.concatenate(runs)[keep]
    try:
        return Trace(topk, num_experts, [int(x) for x in moe_layers], request_ids=request_ids)
    except (ValueError, TypeError) as err:
        raise malformed(path, str(err)) from err


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
