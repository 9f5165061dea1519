"""Recordings built the way the engines' own recorders write them, for the readers' tests.

- SGLang ``--expert-distribution-recorder-mode per_token`` (sgl-project/sglang
  python/sglang/srt/eplb/expert_distribution.py, _DetailSinglePassGatherer): a top-k buffer
  [num_hidden_layers, tokens, 8] (_TOP_K_NUM = 8), reset to -1 at every forward pass, into
  which each MoE layer writes its [tokens, k] *physical* ids in the first k columns; one dump
  per rank with ``records`` and ``last_physical_to_logical_map`` [num_hidden_layers, P]. With
  tensor parallelism and no DP attention every rank records the same tokens; with DP
  attention each rank records its own tokens under the same forward_pass_id.
- TensorRT-LLM expert statistics (NVIDIA/TensorRT-LLM tensorrt_llm/_torch/expert_statistic.py,
  read by examples/wide_ep/ep_load_balancer/utils.py): ``meta_info.json``,
  ``rank<r>.safetensors`` ("<iter>_<layer>" -> int64 counts [E]) and, in newer versions,
  ``rank<r>_raw.safetensors`` ("<iter>_<layer>" -> int32 [tokens, k]); with the dispatch
  dump (EXPERT_STATISTIC_DUMP_DISPATCH) ``rank<r>_numtokens.json`` ("<iter>_<layer>" ->
  tokens) and ``ep_size``, ``experts_per_rank`` in ``meta_info.json``.
- SGLang ``per_pass`` (same file, _DetailAccumulator with the select-experts gatherer):
  records with ``global_physical_count`` [num_hidden_layers, P] instead of per-token ids.
The dumps are the dicts ``torch.load`` returns, with numpy arrays in place of tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SGLANG_TOP_K_WIDTH = 8


def physical_ids(logical: np.ndarray, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each logical id as one of its physical slots in the map ``row`` [P] (any replica)."""
    out = np.empty_like(logical)
    for index, e in np.ndenumerate(logical):
        out[index] = rng.choice(np.flatnonzero(row == e))
    return out


def sglang_per_token_dumps(
    topk: np.ndarray,
    moe_layers: list[int],
    num_hidden_layers: int,
    p2l: np.ndarray,
    *,
    dp_ranks: int = 1,
    tp_twins: int = 1,
    passes: int = 2,
    seed: int = 0,
) -> list[dict]:
    """One dump per rank of the logical routing ``topk`` [tokens, len(moe_layers), k].

    Tokens are split into ``passes`` forward passes and, within a pass, over ``dp_ranks``
    DP-attention ranks; each of those ranks is repeated by ``tp_twins`` ranks."""
    rng = np.random.default_rng(seed)
    tokens, _, k = topk.shape
    ranks: list[list[dict]] = [[] for _ in range(dp_ranks * tp_twins)]
    for pass_id, pass_tokens in enumerate(np.array_split(np.arange(tokens), passes)):
        for dp, mine in enumerate(np.array_split(pass_tokens, dp_ranks)):
            buffer = np.full((num_hidden_layers, len(mine), SGLANG_TOP_K_WIDTH), -1, np.int32)
            for position, layer in enumerate(moe_layers):
                buffer[layer, :, :k] = physical_ids(topk[mine, position, :], p2l[layer], rng)
            for twin in range(tp_twins):
                rank = dp * tp_twins + twin
                ranks[rank].append(
                    {
                        "forward_pass_id": pass_id,
                        "rank": rank,
                        "input_ids": (mine % 1000).tolist(),
                        "positions": list(range(len(mine))),
                        "extend_seq_lens": [len(mine)],
                        "forward_mode": 1,
                        "topk_ids_of_layer": buffer.copy(),
                        "misc_objects": [],
                        "global_physical_count": np.zeros((num_hidden_layers, p2l.shape[1])),
                    }
                )
    return [{"records": records, "last_physical_to_logical_map": p2l} for records in ranks]


def trtllm_statistics_folder(
    folder: Path,
    topk: np.ndarray,
    layer_ids: list[int],
    num_experts: int,
    *,
    ranks: int = 2,
    iterations: int = 2,
    raw: bool = True,
    meta_experts: int | None = None,
    dispatch: bool = False,
) -> None:
    """Writes the statistics of ``topk`` [tokens, layers, k]: tokens split over iterations,
    then over attention-DP ranks, each rank writing its own counts (and raw ids). With
    ``dispatch`` (EXPERT_STATISTIC_DUMP_DISPATCH and EXPERT_STATISTIC_EP_SIZE set), also
    ``rank<r>_numtokens.json`` and ``ep_size`` / ``experts_per_rank`` in the meta info."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    meta = {"num_experts": meta_experts or num_experts, "num_experts_per_token": topk.shape[2]}
    if dispatch:
        meta.update(ep_size=ranks, experts_per_rank=meta["num_experts"] // ranks)
    (folder / "meta_info.json").write_text(json.dumps(meta))
    tokens: list[dict[str, int]] = [{} for _ in range(ranks)]
    counts: list[dict[str, np.ndarray]] = [{} for _ in range(ranks)]
    raws: list[dict[str, np.ndarray]] = [{} for _ in range(ranks)]
    for it, chunk in enumerate(np.array_split(np.arange(len(topk)), iterations)):
        for r, mine in enumerate(np.array_split(chunk, ranks)):
            for position, layer in enumerate(layer_ids):
                ids = topk[mine, position, :].astype(np.int32)
                key = f"{it}_{layer}"
                counts[r][key] = np.bincount(ids.ravel(), minlength=meta["num_experts"]).astype(
                    np.int64
                )
                raws[r][key] = ids
                tokens[r][key] = len(ids)
    for r in range(ranks):
        save_file(counts[r], str(folder / f"rank{r}.safetensors"))
        if raw:
            save_file(raws[r], str(folder / f"rank{r}_raw.safetensors"))
        if dispatch:
            (folder / f"rank{r}_numtokens.json").write_text(json.dumps(tokens[r]))


def sglang_dp_same_prompt_dumps(
    topk: np.ndarray, moe_layers: list[int], num_hidden_layers: int, p2l: np.ndarray
) -> list[dict]:
    """Two DP-attention ranks that serve the same prompt ``topk`` in forward pass 0 (equal
    records on both ranks) and one half of it each in pass 1: 3 x tokens in all."""
    rng = np.random.default_rng(0)
    tokens, _, k = topk.shape

    def record(pass_id: int, rank: int, mine: np.ndarray, buffer: np.ndarray) -> dict:
        return {
            "forward_pass_id": pass_id,
            "rank": rank,
            "input_ids": (mine % 1000).tolist(),
            "positions": list(range(len(mine))),
            "topk_ids_of_layer": buffer.copy(),
        }

    def ids(mine: np.ndarray) -> np.ndarray:
        buffer = np.full((num_hidden_layers, len(mine), SGLANG_TOP_K_WIDTH), -1, np.int32)
        for position, layer in enumerate(moe_layers):
            buffer[layer, :, :k] = physical_ids(topk[mine, position, :], p2l[layer], rng)
        return buffer

    everything = np.arange(tokens)
    shared = ids(everything)
    halves = np.array_split(everything, 2)
    return [
        {
            "records": [
                record(0, rank, everything, shared),
                record(1, rank, halves[rank], ids(halves[rank])),
            ],
            "last_physical_to_logical_map": p2l,
        }
        for rank in range(2)
    ]


def sglang_per_pass_dumps(
    topk: np.ndarray,
    moe_layers: list[int],
    num_hidden_layers: int,
    p2l: np.ndarray,
    *,
    dp_ranks: int = 1,
    tp_twins: int = 1,
    passes: int = 2,
    seed: int = 0,
) -> list[dict]:
    """The ``per_pass`` dumps of the same recording as `sglang_per_token_dumps`: records
    with ``global_physical_count`` [num_hidden_layers, P] (each rank counting the physical
    slots its tokens chose, as SGLang's select-experts gatherer does), no per-token ids."""
    dumps = sglang_per_token_dumps(
        topk,
        moe_layers,
        num_hidden_layers,
        p2l,
        dp_ranks=dp_ranks,
        tp_twins=tp_twins,
        passes=passes,
        seed=seed,
    )
    slots = p2l.shape[1]
    out = []
    for dump in dumps:
        records = []
        for rec in dump["records"]:
            ids = rec["topk_ids_of_layer"]
            count = np.zeros((num_hidden_layers, slots), dtype=np.int32)
            for layer in range(num_hidden_layers):
                valid = ids[layer][ids[layer] >= 0]
                count[layer] = np.bincount(valid, minlength=slots)
            records.append(
                {
                    "forward_pass_id": rec["forward_pass_id"],
                    "rank": rec["rank"],
                    "gatherer_key": "primary",
                    "global_physical_count": count,
                }
            )
        out.append({"records": records, "last_physical_to_logical_map": p2l})
    return out
