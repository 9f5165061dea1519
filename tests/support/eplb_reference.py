"""A plain numpy transcription of DeepSeek's EPLB (deepseek-ai/EPLB ``eplb.py``, commit
d52c72d), written from reading the reference, to check `moefast.eplb` against.

The reference works in float32 (``weight.float()``): loads per replica are float32 quotients,
pack loads float32 running sums, and every comparison is on those values. Two choices where the
reference leaves the result to its torch build, made the same way in moefast's core:
- equal weights are sorted by index (the reference's ``sort`` is unstable; its order among equal
  keys depends on the CPU kernel torch picks);
- the load of an expert group is the float32 rounding of its exact sum (torch sums 32 floats
  in an order that depends on the vector width).
Everything else (first maximum in ``max``, first lightest pack in ``min``, the hierarchical
steps) is the reference's rule. Slow on purpose: loops as the reference writes them.
"""

from __future__ import annotations

import numpy as np


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """pack_index, rank_in_pack [X, n]: items heaviest first to the lightest non-full pack."""
    rows, n = weight.shape
    per_pack = n // num_packs
    if per_pack == 1:
        return np.tile(np.arange(n), (rows, 1)), np.zeros((rows, n), dtype=np.int64)
    pack_index = np.full((rows, n), -1, dtype=np.int64)
    rank_in_pack = np.full((rows, n), -1, dtype=np.int64)
    for i in range(rows):
        order = np.argsort(-weight[i], kind="stable")
        loads = [np.float32(0)] * num_packs
        items = [0] * num_packs
        for item in order:
            open_packs = [p for p in range(num_packs) if items[p] < per_pack]
            pack = min(open_packs, key=lambda p: loads[p])
            pack_index[i, item] = pack
            rank_in_pack[i, item] = items[pack]
            loads[pack] = np.float32(loads[pack] + weight[i, item])
            items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_phy: int):
    """phy2log, rank [X, num_phy], logcnt [X, num_log]: each extra replica to the first expert
    of highest float32 load per replica."""
    rows, num_log = weight.shape
    phy2log = np.tile(np.arange(num_phy), (rows, 1))
    rank = np.zeros((rows, num_phy), dtype=np.int64)
    logcnt = np.ones((rows, num_log), dtype=np.int64)
    for i in range(num_log, num_phy):
        per_replica = (weight / logcnt.astype(np.float32)).astype(np.float32)
        best = per_replica.argmax(axis=1)  # the first maximum, as torch's max(dim)
        phy2log[:, i] = best
        rank[:, i] = logcnt[np.arange(rows), best]
        logcnt[np.arange(rows), best] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.tile(np.arange(perm.shape[1]), (perm.shape[0], 1)), axis=1)
    return inv


def rebalance_hierarchical(weight, num_phy, num_groups, num_nodes, num_gpus):
    layers, num_log = weight.shape
    group_size = num_log // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_phy // num_gpus
    # Step 1: groups to nodes.
    group_load = (
        weight.astype(np.float64).reshape(layers, num_groups, group_size).sum(-1).astype(np.float32)
    )
    group_pack, group_rank = balanced_packing(group_load, num_nodes)
    log2mlog = (
        ((group_pack * groups_per_node + group_rank) * group_size)[:, :, None]
        + np.arange(group_size)
    ).reshape(layers, -1)
    mlog2log = _inverse(log2mlog)
    # Step 2: replicas within each node.
    tokens_per_mlog = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, num_log // num_nodes)
    phy2mlog, phyrank, mlogcnt = replicate_experts(tokens_per_mlog, num_phy // num_nodes)
    # Step 3: replicas to the GPUs of their node.
    per_replica = (tokens_per_mlog / mlogcnt.astype(np.float32)).astype(np.float32)
    tokens_per_phy = np.take_along_axis(per_replica, phy2mlog, axis=1)
    pack, rank = balanced_packing(tokens_per_phy, num_gpus // num_nodes)
    pphy2phy = _inverse(pack * per_gpu + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    pphy2mlog = (
        pphy2mlog.reshape(layers, num_nodes, -1)
        + np.arange(0, num_log, num_log // num_nodes)[None, :, None]
    ).reshape(layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=1).reshape(layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(layers, -1), log2mlog, axis=1)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """phy2log [L, P], log2phy [L, E, X] (-1 padded), logcnt [L, E], as the reference returns."""
    weight = np.asarray(weight).astype(np.float32)
    layers, num_log = weight.shape
    if num_groups % num_nodes == 0:
        phy2log, rank, logcnt = rebalance_hierarchical(
            weight, num_replicas, num_groups, num_nodes, num_gpus
        )
    else:
        phy2log, rank, logcnt = rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)
    width = int(logcnt.max())
    log2phy = np.full((layers, num_log, width), -1, dtype=np.int64)
    for layer in range(layers):
        log2phy[layer, phy2log[layer], rank[layer]] = np.arange(num_replicas)
    return phy2log, log2phy, logcnt
