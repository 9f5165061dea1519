"""TensorRT-LLM expert statistics: a folder with ``meta_info.json`` (``num_experts``,
``num_experts_per_token``) and ``rank<r>.safetensors`` whose keys ``"<iter>_<layer>"`` (layer =
decoder-layer index) hold per-expert token counts [E], summed here over iterations and ranks.
Newer versions also write ``rank<r>_raw.safetensors`` with the same keys holding each token's
top-k ids, int32 [tokens, k]: co-activation data, read as a trace (`read_trtllm_trace`).
With the MoE load balancer on while recording, ids and counts are per *slot* and
``num_experts`` is the slot count: give the model's expert count to detect it.
Versions with the dispatch dump also write ``rank<r>_numtokens.json`` (``"<iter>_<layer>"`` ->
tokens the rank routed) and ``ep_size`` / ``experts_per_rank`` in ``meta_info.json``: the
counts and raw rows are checked against the token counts, and every rank below ``ep_size``
must have its files."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moefast._util.checks import MAX_LAYERS, check_field_int
from moefast.io.readers._errors import malformed, require
from moefast.io.readers._loading import read_json, to_numpy
from moefast.trace import MAX_EXPERTS, Trace

# ASCII digits, few enough that the numbers are bounded before int() reads them; matched
# against the whole key ("0_1junk" is no key).
_KEY = re.compile(r"([0-9]{1,12})_([0-9]{1,9})")


def _iteration_layer(
    key: str, r: int, path: Path, seen: Mapping[tuple[int, int], str]
) -> tuple[int, int]:
    """(iteration, layer) of a rank's tensor key ``"<iter>_<layer>"``: the whole key must
    match, the layer be below MAX_LAYERS, and no other key of the rank ("0_01" beside
    "0_1") name the same pair."""
    match = _KEY.fullmatch(key)
    if not match:
        raise malformed(path, f"rank {r}: key '{key}' is not '<iter>_<layer>'")
    it, layer = int(match.group(1)), int(match.group(2))
    if layer >= MAX_LAYERS:
        raise malformed(path, f"rank {r}: key '{key}' names layer {layer} >= {MAX_LAYERS}")
    if (it, layer) in seen:
        raise malformed(
            path,
            f"rank {r}: keys '{seen[it, layer]}' and '{key}' both name iteration {it},"
            f" layer {layer}",
        )
    return it, layer


def _checked_ids(ids: np.ndarray, num_experts: int, path: Path, where: str) -> np.ndarray:
    """Top-k ids as int64, refused when out of [0, num_experts) before the cast (a uint64
    2^63 would wrap to a negative id)."""
    if ids.ndim != 2 or (ids.size and ids.dtype.kind not in "iu"):
        raise malformed(path, f"{where} must be int [tokens, k], got {ids.dtype} {ids.shape}")
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_experts:
            bad = low if low < 0 else high
            raise malformed(path, f"{where}: expert id {bad} out of range [0, {num_experts})")
    return ids.astype(np.int64)


def _meta_experts(meta: Mapping, path: Path, model_experts: int | None) -> int:
    if not isinstance(meta, Mapping):
        raise malformed(path, "meta_info.json must hold a JSON object")
    num_experts = check_field_int(
        path / "meta_info.json", "num_experts", meta.get("num_experts"), 1, MAX_EXPERTS
    )
    if model_experts is not None and num_experts != model_experts:
        raise malformed(
            path,
            f"meta_info.json says num_experts = {num_experts} but the model has {model_experts}"
            " experts: statistics recorded with the MoE load balancer on count physical slots"
            f" ({num_experts} here), not experts; record again with the load balancer off",
        )
    return num_experts


def expert_load_from_trtllm(
    meta: Mapping,
    ranks: list[Mapping[str, np.ndarray]],
    source: Path | str = "<trtllm statistics>",
    num_experts: int | None = None,
    num_tokens: list[dict[str, int] | None] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """float [layers, E] and the layer ids, from ``meta_info`` and each rank's count tensors
    (``num_experts``: the model's, to detect slot counts). ``num_tokens`` (each rank's
    ``rank<r>_numtokens.json``, or None) checks that every key's counts add up to its tokens
    times ``num_experts_per_token``."""
    path = Path(str(source))
    num_experts = _meta_experts(meta, path, num_experts)
    k = 1
    if num_tokens is not None and any(t is not None for t in num_tokens):
        k = check_field_int(
            path / "meta_info.json", "num_experts_per_token", meta.get("num_experts_per_token"), 1
        )
    totals: dict[int, np.ndarray] = {}
    for r, tensors in enumerate(ranks):
        tokens = num_tokens[r] if num_tokens is not None and r < len(num_tokens) else None
        seen: dict[tuple[int, int], str] = {}
        for key, value in tensors.items():
            it, layer = _iteration_layer(key, r, path, seen)
            seen[it, layer] = key
            counts = to_numpy(value, path, key).astype(np.float64).ravel()
            if counts.shape != (num_experts,):
                raise malformed(
                    path, f"rank {r}: '{key}' holds {counts.size} counts for {num_experts} experts"
                )
            if tokens is not None:
                _check_tokens(tokens, key, int(counts.sum()) // k, r, path, "counts for")
                if int(counts.sum()) % k:
                    raise malformed(path, f"rank {r}: '{key}' counts are not a multiple of k = {k}")
            totals[layer] = totals.get(layer, 0) + counts
    if not totals:
        raise malformed(path, "no statistics in any rank file")
    layers = sorted(totals)
    return np.stack([totals[layer] for layer in layers]), layers


def _ep_size(meta: Mapping, path: Path, ranks: list[int], num_experts: int) -> None:
    """Newer versions write ``ep_size`` (and ``experts_per_rank``) to ``meta_info.json``:
    then every rank 0..ep_size-1 must have its file, or its tokens would be missing."""
    if "ep_size" not in meta:
        return
    where = path / "meta_info.json"
    ep_size = check_field_int(where, "ep_size", meta["ep_size"], 1, MAX_LAYERS)
    if "experts_per_rank" in meta:
        per_rank = check_field_int(where, "experts_per_rank", meta["experts_per_rank"], 0)
        if per_rank != num_experts // ep_size:
            raise malformed(
                where,
                f"experts_per_rank = {per_rank}, but {num_experts} experts over ep_size ="
                f" {ep_size} ranks is {num_experts // ep_size}",
            )
    missing = sorted(set(range(ep_size)) - set(ranks))
    extra = sorted(set(ranks) - set(range(ep_size)))
    if missing or extra:
        raise malformed(
            path,
            f"meta_info.json says ep_size = {ep_size}, but"
            + (f" the files of ranks {missing} are missing" if missing else "")
            + (" and" if missing and extra else "")
            + (f" ranks {extra} are beyond it" if extra else ""),
        )


def _num_tokens(path: Path, ranks: list[int]) -> list[dict[str, int] | None]:
    """Each rank's ``rank<r>_numtokens.json`` (``"<iter>_<layer>"`` -> tokens), which newer
    versions write beside the counts; None for a rank without one."""
    out: list[dict[str, int] | None] = []
    for r in ranks:
        f = path / f"rank{r}_numtokens.json"
        if not f.is_file():
            out.append(None)
            continue
        data = read_json(f)
        if not isinstance(data, dict):
            raise malformed(f, "must hold a JSON object of '<iter>_<layer>': tokens")
        out.append({key: check_field_int(f, key, value, 0) for key, value in data.items()})
    return out


def _check_tokens(
    tokens: Mapping[str, int] | None, key: str, count: int, r: int, path: Path, what: str
) -> None:
    """``count`` (ids or token rows of a rank's key) against its ``numtokens`` entry."""
    if tokens is None:
        return
    if key not in tokens:
        raise malformed(path, f"rank {r}: '{key}' is missing from rank{r}_numtokens.json")
    if tokens[key] != count:
        raise malformed(
            path,
            f"rank {r}: '{key}' holds {what} {count}, but rank{r}_numtokens.json says"
            f" {tokens[key]} tokens",
        )


def _rank_numbers(files: list[Path]) -> list[int]:
    return [int(re.match(r"rank([0-9]+)", f.name).group(1)) for f in files]  # type: ignore[union-attr]


def _rank_files(path: Path, raw: bool) -> list[Path]:
    pattern = re.compile(
        r"rank([0-9]{1,9})_raw\.safetensors" if raw else r"rank([0-9]{1,9})\.safetensors"
    )
    found = [(int(m.group(1)), f) for f in path.iterdir() if (m := pattern.fullmatch(f.name))]
    return [f for _, f in sorted(found)]


def _load_ranks(files: list[Path]) -> list[Mapping[str, np.ndarray]]:
    st = require("safetensors", "reading TensorRT-LLM statistics")
    require("safetensors.numpy", "reading TensorRT-LLM statistics")
    ranks = []
    for f in files:
        try:
            ranks.append(st.numpy.load_file(str(f)))
        except Exception as err:  # safetensors raises its own error types
            raise malformed(f, f"not a readable safetensors file ({err})") from err
    return ranks


def read_trtllm_load(path: Path, num_experts: int | None = None) -> tuple[np.ndarray, list[int]]:
    meta = read_json(path / "meta_info.json")
    # rank<r>_raw.safetensors hold per-token ids, not counts: never summed as counts.
    files = _rank_files(path, raw=False)
    if not files:
        if _rank_files(path, raw=True):
            raise malformed(
                path, "only rank<r>_raw.safetensors (per-token ids): read it with load_trace"
            )
        raise malformed(path, "no rank<r>.safetensors file")
    ranks = _rank_numbers(files)
    experts = _meta_experts(meta, path, num_experts)
    _ep_size(meta, path, ranks, experts)
    return expert_load_from_trtllm(
        meta, _load_ranks(files), path, num_experts, _num_tokens(path, ranks)
    )


def trace_from_trtllm_raw(
    meta: Mapping,
    ranks: list[Mapping[str, np.ndarray]],
    source: Path | str = "<trtllm statistics>",
    num_experts: int | None = None,
    num_tokens: list[dict[str, int] | None] | None = None,
) -> Trace:
    """A trace from each rank's raw tensors (``"<iter>_<layer>"`` -> int [tokens, k]),
    checked against each rank's ``numtokens`` (or None) where given.

    Tokens of one (iteration, rank) are the same in every layer; blocks are concatenated in
    iteration then rank order, and a rank repeating another's block of the same iteration
    (tensor parallelism without attention DP) is kept once."""
    path = Path(str(source))
    num_experts = _meta_experts(meta, path, num_experts)
    blocks: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    for r, tensors in enumerate(ranks):
        keys: dict[tuple[int, int], str] = {}
        for key, value in tensors.items():
            it, layer = _iteration_layer(key, r, path, keys)
            keys[it, layer] = key
            ids = _checked_ids(to_numpy(value, path, key), num_experts, path, f"rank {r}: '{key}'")
            if num_tokens is not None and r < len(num_tokens):
                _check_tokens(num_tokens[r], key, len(ids), r, path, "token rows")
            blocks.setdefault((it, r), {})[layer] = ids
    if not blocks:
        raise malformed(path, "no tensors in any raw rank file")
    layer_ids = sorted(next(iter(blocks.values())))
    parts: list[np.ndarray] = []
    seen: dict[int, list[np.ndarray]] = {}
    for (it, r), layers in sorted(blocks.items()):
        if sorted(layers) != layer_ids:
            raise malformed(
                path, f"iteration {it} rank {r}: layers {sorted(layers)}, not {layer_ids}"
            )
        shapes = {layers[x].shape for x in layer_ids}
        if len(shapes) != 1:
            raise malformed(path, f"iteration {it} rank {r}: layers hold {sorted(shapes)} ids")
        block = np.stack([layers[x] for x in layer_ids], axis=1).astype(np.int64)
        twins = seen.setdefault(it, [])
        if any(t.shape == block.shape and np.array_equal(t, block) for t in twins):
            continue
        twins.append(block)
        parts.append(block)
    topk = np.concatenate(parts)
    try:
        return Trace(topk, num_experts, layer_ids)
    except (ValueError, TypeError) as err:
        raise malformed(path, str(err)) from err


def read_trtllm_trace(path: Path, num_experts: int | None = None) -> Trace:
    """The per-token top-k of ``rank<r>_raw.safetensors`` in a statistics folder."""
    meta = read_json(path / "meta_info.json")
    files = _rank_files(path, raw=True)
    if not files:
        raise malformed(
            path,
            "no rank<r>_raw.safetensors (per-token ids): this TensorRT-LLM version wrote counts"
            " only; read them with load_expert_load",
        )
    ranks = _rank_numbers(files)
    _ep_size(meta, path, ranks, _meta_experts(meta, path, num_experts))
    return trace_from_trtllm_raw(
        meta, _load_ranks(files), path, num_experts, _num_tokens(path, ranks)
    )


def is_trtllm_raw(path: Path) -> bool:
    """A TensorRT-LLM statistics folder with per-token ids (``rank<r>_raw.safetensors``)."""
    return path.is_dir() and (path / "meta_info.json").is_file() and bool(_rank_files(path, True))


@dataclass
class TrtllmRawTrace:
    """The raw rank files of a statistics folder, read one iteration at a time (tensors are
    loaded lazily by key), so a chunk's memory, not the folder's, bounds what is held.
    Blocks come in `trace_from_trtllm_raw`'s order, twins dropped the same way."""

    path: Path
    num_experts: int
    files: list[Path]
    #: per rank: (iteration, layer) -> tensor key
    keys: list[dict[tuple[int, int], str]]
    layer_ids: list[int]

    @classmethod
    def open(
        cls, path: Path, num_experts: int | None = None, format: str | None = None
    ) -> TrtllmRawTrace:
        if format not in (None, "trtllm"):
            raise ValueError(f"{path}: a TensorRT-LLM folder, not format {format!r}")
        meta = read_json(path / "meta_info.json")
        experts = _meta_experts(meta, path, num_experts)
        files = _rank_files(path, raw=True)
        if not files:
            raise malformed(path, "no rank<r>_raw.safetensors (per-token ids)")
        _ep_size(meta, path, _rank_numbers(files), experts)
        st = require("safetensors", "reading TensorRT-LLM statistics")
        keys: list[dict[tuple[int, int], str]] = []
        for r, f in enumerate(files):
            try:
                with st.safe_open(str(f), framework="numpy") as handle:
                    names = list(handle.keys())
            except Exception as err:  # safetensors raises its own error types
                raise malformed(f, f"not a readable safetensors file ({err})") from err
            rank: dict[tuple[int, int], str] = {}
            for key in names:
                rank[_iteration_layer(key, r, path, rank)] = key
            keys.append(rank)
        blocks: dict[tuple[int, int], list[int]] = {}
        for r, rank in enumerate(keys):
            for it, layer in rank:
                blocks.setdefault((it, r), []).append(layer)
        if not blocks:
            raise malformed(path, "no tensors in any raw rank file")
        layer_ids = sorted(blocks[min(blocks)])
        for (it, r), layers in sorted(blocks.items()):
            if sorted(layers) != layer_ids:
                raise malformed(
                    path, f"iteration {it} rank {r}: layers {sorted(layers)}, not {layer_ids}"
                )
        return cls(path, experts, files, keys, layer_ids)

    def _blocks(self) -> Iterator[np.ndarray]:
        """int64 [tokens, layers, k] per (iteration, rank), twins of an iteration kept once."""
        st = require("safetensors", "reading TensorRT-LLM statistics")
        iterations = sorted({it for rank in self.keys for it, _ in rank})
        with ExitStack() as stack:
            handles = [
                stack.enter_context(st.safe_open(str(f), framework="numpy")) for f in self.files
            ]
            for it in iterations:
                twins: list[np.ndarray] = []
                for r, (rank, handle) in enumerate(zip(self.keys, handles, strict=True)):
                    if (it, self.layer_ids[0]) not in rank:
                        continue
                    layers = []
                    for layer in self.layer_ids:
                        key = rank[it, layer]
                        ids = to_numpy(handle.get_tensor(key), self.path, key)
                        layers.append(
                            _checked_ids(ids, self.num_experts, self.path, f"rank {r}: '{key}'")
                        )
                    shapes = {x.shape for x in layers}
                    if len(shapes) != 1:
                        raise malformed(
                            self.path, f"iteration {it} rank {r}: layers hold {sorted(shapes)} ids"
                        )
                    block = np.stack(layers, axis=1).astype(np.int64)
                    if any(t.shape == block.shape and np.array_equal(t, block) for t in twins):
                        continue
                    twins.append(block)
                    yield block

    def num_tokens(self) -> int:
        """Tokens of the trace (a pass over the ids: twins are found by content)."""
        return sum(len(b) for b in self._blocks())

    def chunks(self, chunk_tokens: int) -> Iterator[Trace]:
        """The trace `read_trtllm_trace` reads, as chunks of ``chunk_tokens`` tokens (the last
        one shorter), holding about one chunk of ids at a time."""
        held: list[np.ndarray] = []
        count = 0
        for block in self._blocks():
            held.append(block)
            count += len(block)
            if count >= chunk_tokens:
                ids = np.concatenate(held)
                whole = count - count % chunk_tokens
                for start in range(0, whole, chunk_tokens):
                    yield self._trace(ids[start : start + chunk_tokens])
                held, count = [ids[whole:]], count - whole
        if count:
            yield self._trace(np.concatenate(held))

    def _trace(self, topk: np.ndarray) -> Trace:
        try:
            return Trace(topk, self.num_experts, self.layer_ids)
        except (ValueError, TypeError) as err:
            raise malformed(self.path, str(err)) from err
