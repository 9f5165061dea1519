"""The engines' dispatch rules (`moefast.io.engines.dispatch`) against plain transcriptions
of the engines' code, on physical slot ids as the engines hold them."""

from __future__ import annotations

import json

import moefast as mf
import numpy as np
import pytest
from moefast.eplb import rebalance_experts
from moefast.io.engines.dispatch import (
    dispatch_label,
    dispatch_maps,
    engine_dispatch,
    sglang_static_maps,
    trtllm_map,
)
from moefast.io.engines.slots import gpu_slots
from support.dispatch_reference import sglang_reference
from support.shared_data import DEEPSEEK_DECODE_LOAD, needs_deepseek_statistics


def placements_of(phy2log: np.ndarray, num_gpus: int) -> list[mf.Placement]:
    local = phy2log.shape[1] // num_gpus
    out = []
    for row in phy2log:
        lists = [
            sorted({p // local for p in np.nonzero(row == e)[0]}) for e in range(row.max() + 1)
        ]
        out.append(mf.Placement.from_lists(lists, num_gpus=num_gpus))
    return out


@needs_deepseek_statistics
def test_sglang_static_map_matches_the_engine_on_v3_statistics():
    counts = np.array(json.loads(DEEPSEEK_DECODE_LOAD.read_text())["logical_count"])[3:]
    gpus, physical = 32, 288
    phy2log, _, _ = rebalance_experts(counts, physical, 1, 1, gpus)
    phy2log = np.asarray(phy2log)
    placements = placements_of(phy2log, gpus)
    want = sglang_reference(phy2log, gpus) // (physical // gpus)
    # Every layer, repeated slots (an expert twice on one GPU) included, read from the map.
    repeats = [i for i, p in enumerate(placements) if p.replicas.sum() < physical]
    assert repeats, "the statistics give maps with repeats"
    got = sglang_static_maps(placements, slots=phy2log)
    for layer, m in enumerate(got):
        np.testing.assert_array_equal(m, want[:, layer, :])
    # Without repeats, the placements alone give the same maps (physical order is GPU
    # order, as in every file moefast writes).
    keep = [i for i in range(len(placements)) if i not in repeats]
    assert len(keep) >= 5, len(keep)
    alone = sglang_static_maps([placements[i] for i in keep])
    want = sglang_reference(phy2log[keep], gpus) // (physical // gpus)
    for layer, m in enumerate(alone):
        np.testing.assert_array_equal(m, want[:, layer, :])


def test_static_map_keeps_local_replicas_and_spreads_the_rest():
    placement = mf.Placement.from_lists([[0, 1], [2], [3], [0]], num_gpus=4)
    (m,) = sglang_static_maps([placement])
    assert m[0, 0] == 0 and m[1, 0] == 1
    # Ranks 2 and 3 lack expert 0: fair choices give each replica once.
    assert sorted(m[2:, 0]) == [0, 1]
    assert (m[:, 1] == 2).all() and (m[:, 3] == 0).all()
    # The newer rule takes the replica on the rank's node when only some are there.
    spread = mf.Placement.from_lists([[0, 2], [1], [3], [0]], num_gpus=4)
    (node,) = sglang_static_maps([spread], gpus_per_node=2)
    assert node[:, 0].tolist() == [0, 0, 2, 2]


def test_trtllm_lone_token_goes_round_robin_by_rank():
    placement = mf.Placement.from_lists([[0, 2, 3], [1]], num_gpus=4)
    m = trtllm_map(placement)
    assert m[:, 0].tolist() == [0, 2, 3, 0]
    assert m[:, 1].tolist() == [1, 1, 1, 1]
    assert dispatch_maps([placement], "sglang-dynamic") == [None]
    with pytest.raises(ValueError, match="unknown dispatch"):
        dispatch_maps([placement], "vllm-eplb")
    # Slots ascend on each GPU, so physical order is GPU order.
    full = mf.Placement.from_lists([[0, 1], [0, 1]], num_gpus=2)
    assert gpu_slots(full, 2).tolist() == [[0, 1], [0, 1]]


def test_vllm_ascend_map_is_replica_rank_mod_count_at_every_size():
    # vLLM-Ascend's log2phy: rank r takes replica r % count of an expert, replicas in rank
    # order, for every token; TensorRT-LLM's lone token of rank r the same.
    placement = mf.Placement.from_lists([[0, 2, 3], [1]], num_gpus=4)
    (m,) = dispatch_maps([placement], "vllm-ascend")
    reference = [[[0, 2, 3][r % 3], 1][e] for e in range(2) for r in range(4)]
    assert m.T.ravel().tolist() == reference
    assert np.array_equal(m, trtllm_map(placement))
    assert engine_dispatch("vllm-ascend") == "vllm-ascend" and engine_dispatch("native") == "best"


def test_dispatch_labels_name_the_rule():
    assert dispatch_label("trtllm") == "TensorRT-LLM dispatch"
    assert dispatch_label("best") == "best replica choice"
