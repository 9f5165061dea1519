"""The SGLang plugin against stand-ins with SGLang's module names and contract: the
function is replaced where SGLang calls it, each dispatch info learns its layer, and the
replicas come from the engine's physical-to-logical map."""

from __future__ import annotations

import types
from dataclasses import dataclass

import moefast as mf
import numpy as np
import pytest
from moefast.dispatch import ReplicaTable, SglangDispatch, install_sglang, route
from moefast.dispatch.sglang import LAYER_ATTRIBUTE

MAPS = np.array([[0, 1, 2, 3, 0, 4], [0, 1, 2, 0, 3, 4]])


def sglang_standins(algorithm: str | None = "dynamic") -> dict[str, types.ModuleType]:
    where = types.ModuleType("sglang.srt.eplb.expert_location_dispatch")
    metadata = types.SimpleNamespace(physical_to_logical_map=MAPS, ep_size=2)

    @dataclass
    class ExpertLocationDispatchInfo:
        ep_dispatch_algorithm: str

        @classmethod
        def init_new(cls, layer_id: int):
            return None if algorithm is None else cls(algorithm)

    def logical_to_physical(topk_ids, info):
        raise AssertionError("SGLang's own dispatch ran")

    where.ExpertLocationDispatchInfo = ExpertLocationDispatchInfo
    where.get_global_expert_location_metadata = lambda: metadata
    where.topk_ids_logical_to_physical = logical_to_physical
    topk = types.ModuleType("sglang.srt.layers.moe.topk")
    topk.topk_ids_logical_to_physical = logical_to_physical
    return {where.__name__: where, topk.__name__: topk, "ep_rank": lambda: 1}


def test_install_replaces_both_names_and_routes_by_layer() -> None:
    mods = sglang_standins()
    dispatch = install_sglang(modules=mods)
    where = mods["sglang.srt.eplb.expert_location_dispatch"]
    topk = mods["sglang.srt.layers.moe.topk"]
    ids = np.array([[0, 1], [0, 4]])
    for layer in (0, 1):
        info = where.ExpertLocationDispatchInfo.init_new(layer)
        assert getattr(info, LAYER_ATTRIBUTE) == layer
        out = topk.topk_ids_logical_to_physical(ids, info)
        np.testing.assert_array_equal(out, route(ids, ReplicaTable(MAPS[layer], 2, rank=1)))
        assert (MAPS[layer][out] == ids).all()
    assert where.topk_ids_logical_to_physical is topk.topk_ids_logical_to_physical
    assert dispatch.table(1).rank == 1


def test_without_a_dispatch_algorithm_ids_pass_through() -> None:
    mods = sglang_standins(algorithm=None)
    install_sglang(modules=mods)
    ids = np.array([[0, 1]])
    where = mods["sglang.srt.eplb.expert_location_dispatch"]
    info = where.ExpertLocationDispatchInfo.init_new(0)
    assert mods["sglang.srt.layers.moe.topk"].topk_ids_logical_to_physical(ids, info) is ids


def test_batches_use_the_cost_model() -> None:
    cm = mf.CostModel(10.0, 1.0)
    dispatch = SglangDispatch(MAPS, 2, cost_model=cm)
    info = types.SimpleNamespace(**{LAYER_ATTRIBUTE: 0})
    ids = np.array([[0, 1], [0, 2], [0, 3]])
    np.testing.assert_array_equal(
        dispatch(ids, info), route(ids, ReplicaTable(MAPS[0], 2), cost_model=cm)
    )


def test_an_untagged_info_or_a_bad_map_is_named() -> None:
    with pytest.raises(RuntimeError, match="install_sglang"):
        SglangDispatch(MAPS, 2)(np.array([[0]]), types.SimpleNamespace())
    with pytest.raises(ValueError, match="layer 5"):
        SglangDispatch(MAPS, 2).table(5)
    with pytest.raises(ValueError, match="layers, physical slots"):
        SglangDispatch(MAPS[0], 2).table(0)
