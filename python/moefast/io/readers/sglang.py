"""SGLang's expert-distribution recordings (``--expert-distribution-recorder-mode``).

``per_token`` dumps (one ``.pt`` per rank) hold ``records``, each with ``topk_ids_of_layer``
int [model layers, tokens, 8] of *physical* expert ids, and ``last_physical_to_logical_map``
[layers, P] to turn them into logical ids. SGLang's buffer is always 8 wide and reset to -1
at every forward pass; it writes a token's k ids into the first k columns, so for k < 8 the
other columns stay -1, and dense layers are all -1. k is the most ids any token has; a layer
counts as MoE if some token has k distinct valid ids in it.
``stat`` dumps and the published JSON statistics hold ``logical_count`` [steps, layers, E] or
[layers, E]: per-expert loads without co-activation. ``per_pass`` dumps hold records like
``per_token``'s with only ``global_physical_count`` [layers, P] per forward pass: loads too.
Each record names its ``rank``: tensor-parallel ranks without DP attention repeat one another
in every forward pass and count once; DP-attention ranks record their own requests.

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


def _record_rank(record: Mapping[str, Any], d: int, r: int, path: Path) -> int:
    """The ``rank`` a record names (SGLang writes it), else its dump's index."""
    rank = record.get("rank")
    if rank is None:
        return d
    if hasattr(rank, "item"):  # a one-value tensor or array
        rank = rank.item()
    return check_field_int(path, f"dump {d} record {r}: rank", rank)


def _tp_twins(passes: Mapping[int, Mapping[Any, list[np.ndarray]]]) -> set[int]:
    """Ranks that repeat a lower rank's records: the same forward passes, each with the same
    content. Tensor-parallel ranks without DP attention compute the same batch and record it
    alike in every pass; DP-attention ranks each record their own requests, which may agree
    in a pass (the same prompt sent to two ranks) but not in all of them."""
    twins: set[int] = set()
    kept: list[int] = []
    for rank in sorted(passes):
        mine = passes[rank]
        for other in kept:
            theirs = passes[other]
            if mine.keys() == theirs.keys() and all(
                len(mine[key]) == len(theirs[key])
                and all(
                    a.shape == b.shape and np.array_equal(a, b)
                    for a, b in zip(mine[key], theirs[key], strict=True)
                )
                for key in mine
            ):
                twins.add(rank)
                break
        else:
            kept.append(rank)
    return twins


def _content(ids: np.ndarray, input_ids: Any) -> np.ndarray:
    """What a record holds, for comparing ranks: its ids and, when present, its input ids."""
    try:
        tokens = np.asarray(
            input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids, dtype=np.int64
        ).ravel()
    except (TypeError, ValueError):
        tokens = np.zeros(0, dtype=np.int64)
    return np.concatenate([ids.ravel().astype(np.int64), [-2], tokens])


def trace_from_sglang_per_token(
    dumps: Sequence[Mapping[str, Any]],
    num_experts: int | None = None,
    source: Path | str = "<sglang per_token dump>",
    dp_attention: bool | None = None,
) -> Trace:
    """A trace from the dicts of one or more ranks' ``per_token`` dumps.

    Tokens of all ranks and forward passes are concatenated, forward pass by forward pass
    (ranks in order within a pass: DP-attention ranks record their own tokens under the
    same forward_pass_id). Tensor-parallel ranks without DP attention repeat one another:
    a rank whose records equal a lower rank's in every forward pass (same passes, same ids
    and input ids) is dropped whole. ``dp_attention=True`` keeps every rank (records that
    agree in every pass were still recorded by different ranks), ``False`` keeps a record
    once per forward pass whatever its rank, and None (default) decides rank by rank as
    above. Tokens without a valid top-k in some MoE layer are dropped with a warning.

    The records carry no request id, so ``request_ids`` number the runs of consecutive
    ``positions`` within a forward pass (one prompt chunk of one request in prefill, one token
    per request in decode), or whole forward passes where ``positions`` is missing: held-out
    splits then never cut a prompt chunk.
    """
    path = Path(str(source))
    if dp_attention not in (None, True, False):
        raise TypeError(f"dp_attention must be None, True or False, got {dp_attention!r}")
    blocks: list[np.ndarray] = []
    pass_ids: list[int | None] = []
    runs: list[np.ndarray] = []
    ranks: list[int] = []
    seen: dict[Any, list[np.ndarray]] = {}
    contents: dict[int, dict[Any, list[np.ndarray]]] = {}
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
            rank = _record_rank(record, d, r, path)
            key = record.get("forward_pass_id")
            if key is not None:
                if hasattr(key, "item"):  # a one-value tensor or array
                    key = key.item()
                key = check_field_int(path, f"dump {d} record {r}: forward_pass_id", key)
                if dp_attention is False:
                    twins = seen.setdefault(key, [])
                    if any(t.shape == ids.shape and np.array_equal(t, ids) for t in twins):
                        continue
                    twins.append(ids)
            content = _content(ids, record.get("input_ids"))
            contents.setdefault(rank, {}).setdefault(key, []).append(content)
            ranks.append(rank)
            blocks.append(ids)
            pass_ids.append(None if key is None else int(key))
            runs.append(_position_runs(record.get("positions"), ids.shape[1]))
    if not blocks:
        raise malformed(path, "no record holds any token")
    if dp_attention is None:
        twins_of = _tp_twins(contents)
        keep_block = [rank not in twins_of for rank in ranks]
        blocks = [b for b, k in zip(blocks, keep_block, strict=True) if k]
        pass_ids = [p for p, k in zip(pass_ids, keep_block, strict=True) if k]
        runs = [x for x, k in zip(runs, keep_block, strict=True) if k]
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


def is_load_dump(path: Path) -> bool:
    """SGLang ``.pt`` dumps (one file or a folder of them) that hold per-expert loads only:
    ``stat`` dumps (``logical_count``) or ``per_pass`` dumps, not ``per_token`` records.
    Reads the first dump (needs torch)."""
    dump = _torch_load(dump_files(path)[0])
    if not isinstance(dump, Mapping):
        return False
    records = dump.get("records")
    if isinstance(records, Sequence) and records and isinstance(records[0], Mapping):
        return "topk_ids_of_layer" not in records[0]
    return "logical_count" in dump


def read_sglang_trace(
    path: Path, num_experts: int | None = None, dp_attention: bool | None = None
) -> Trace:
    """One ``per_token`` ``.pt`` dump, or a folder of them (one per rank)."""
    dumps = [_torch_load(f) for f in dump_files(path)]
    for dump in dumps:
        records = dump.get("records") if isinstance(dump, Mapping) else None
        if (
            isinstance(records, Sequence)
            and records
            and isinstance(records[0], Mapping)
            and "topk_ids_of_layer" not in records[0]
            and "global_physical_count" in records[0]
        ):
            raise malformed(
                path,
                "a per_pass dump holds per-expert counts, not each token's experts:"
                " read it with load_expert_load, or record with"
                " --expert-distribution-recorder-mode per_token",
            )
    return trace_from_sglang_per_token(dumps, num_experts, path, dp_attention)


def expert_load_from_sglang_per_pass(
    dumps: Sequence[Mapping[str, Any]],
    source: Path | str = "<sglang per_pass dump>",
    dp_attention: bool | None = None,
) -> np.ndarray:
    """float [layers, E] from the dicts of ``per_pass`` dumps (one per rank): each record's
    ``global_physical_count`` [layers, P] mapped to experts with
    ``last_physical_to_logical_map`` and summed. Ranks that repeat a lower rank's counts in
    every forward pass (tensor parallelism without DP attention) count once, as in
    `trace_from_sglang_per_token` (``dp_attention`` likewise)."""
    path = Path(str(source))
    if dp_attention not in (None, True, False):
        raise TypeError(f"dp_attention must be None, True or False, got {dp_attention!r}")
    counts: list[tuple[int, np.ndarray]] = []
    contents: dict[int, dict[Any, list[np.ndarray]]] = {}
    seen: dict[Any, list[np.ndarray]] = {}
    p2l: np.ndarray | None = None
    for d, dump in enumerate(dumps):
        if not isinstance(dump, Mapping) or "records" not in dump:
            raise malformed(path, f"dump {d} has no 'records': is it a per_pass dump?")
        if dump.get("last_physical_to_logical_map") is None:
            raise malformed(path, f"dump {d} has no 'last_physical_to_logical_map'")
        m = int_array(dump["last_physical_to_logical_map"], path, "last_physical_to_logical_map")
        if m.ndim != 2 or m.size == 0 or m.min() < 0 or m.max() >= MAX_EXPERTS:
            raise malformed(
                path,
                f"dump {d}: last_physical_to_logical_map must be experts [layers, P] in"
                f" [0, {MAX_EXPERTS}), got shape {m.shape}",
            )
        if p2l is not None and not np.array_equal(p2l, m):
            raise malformed(path, f"dump {d}: last_physical_to_logical_map differs from dump 0's")
        p2l = m
        records = dump["records"]
        if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
            raise malformed(path, f"dump {d}: 'records' must be a list")
        for r, record in enumerate(records):
            if not isinstance(record, Mapping) or "global_physical_count" not in record:
                raise malformed(path, f"dump {d} record {r} has no 'global_physical_count'")
            count = to_numpy(record["global_physical_count"], path, "global_physical_count")
            if count.dtype.kind not in "iu" or count.shape != m.shape:
                raise malformed(
                    path,
                    f"dump {d} record {r}: global_physical_count must be int {m.shape}"
                    f" [layers, P], got {count.dtype} {count.shape}",
                )
            if count.size and count.min() < 0:
                raise malformed(path, f"dump {d} record {r}: negative global_physical_count")
            count = count.astype(np.int64)
            rank = _record_rank(record, d, r, path)
            key = record.get("forward_pass_id")
            if key is not None:
                if hasattr(key, "item"):
                    key = key.item()
                key = check_field_int(path, f"dump {d} record {r}: forward_pass_id", key)
                if dp_attention is False:
                    twins = seen.setdefault(key, [])
                    if any(np.array_equal(t, count) for t in twins):
                        continue
                    twins.append(count)
            contents.setdefault(rank, {}).setdefault(key, []).append(count)
            counts.append((rank, count))
    if p2l is None or not counts:
        raise malformed(path, "no record holds any count")
    twins_of = _tp_twins(contents) if dp_attention is None else set()
    physical = np.sum([c for rank, c in counts if rank not in twins_of], axis=0)
    load = np.zeros((p2l.shape[0], int(p2l.max()) + 1), dtype=np.float64)
    np.add.at(load, (np.arange(p2l.shape[0])[:, None], p2l), physical)
    return load


def read_sglang_load(path: Path, dp_attention: bool | None = None) -> tuple[np.ndarray, list[int]]:
    """Per-expert load of SGLang ``.pt`` dumps and the layer id of each row: ``stat`` dumps
    (``logical_count``), ``per_pass`` dumps (``global_physical_count`` per record) or
    ``per_token`` dumps (their top-k ids counted)."""
    dumps = [(f, _torch_load(f)) for f in dump_files(path)]
    records = [d.get("records") if isinstance(d, Mapping) else None for _, d in dumps]
    if all(isinstance(r, Sequence) for r in records):
        if any(isinstance(x, Mapping) and "topk_ids_of_layer" in x for r in records for x in r):  # type: ignore[union-attr]
            trace = trace_from_sglang_per_token(
                [d for _, d in dumps], None, path, dp_attention=dp_attention
            )
            return trace.expert_load(), list(trace.layer_ids)
        load = expert_load_from_sglang_per_pass([d for _, d in dumps], path, dp_attention)
        return load, list(range(load.shape[0]))
    load = read_sglang_stat_load(path, dumps)
    return load, list(range(load.shape[0]))


def read_sglang_stat_load(path: Path, dumps: list[tuple[Path, Any]] | None = None) -> np.ndarray:
    """Per-expert load of ``stat`` ``.pt`` dumps (ranks' counts are summed)."""
    loads: list[np.ndarray] = []
    if dumps is None:
        dumps = [(f, _torch_load(f)) for f in dump_files(path)]
    for f, dump in dumps:  # at least one
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
