"""The dispatch as SGLang's `topk_ids_logical_to_physical` (docs/guides/dispatch.md#sglang).

SGLang maps each token's logical top-k ids to physical slots in
`sglang.srt.eplb.expert_location_dispatch.topk_ids_logical_to_physical(topk_ids, info)`,
which `sglang.srt.layers.moe.topk` imports by name, with a per-layer
`ExpertLocationDispatchInfo` made by `ExpertLocationDispatchInfo.init_new(layer_id)`
(sgl-project/sglang 000328a). `install_sglang` replaces the function in both modules and
tags each info with its layer id, so that `SglangDispatch` routes with that layer's
replicas, read from the engine's own physical-to-logical map.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from moefast.batch.cost_model import CostModel
from moefast.dispatch.backend import backend_of
from moefast.dispatch.replicas import ReplicaTable
from moefast.dispatch.route import route

#: The attribute `install_sglang` sets on each dispatch info: its layer id.
LAYER_ATTRIBUTE = "moefast_layer_id"

_DISPATCH_MODULE = "sglang.srt.eplb.expert_location_dispatch"
_TOPK_MODULE = "sglang.srt.layers.moe.topk"


class SglangDispatch:
    """``topk_ids_logical_to_physical(topk_ids, info)`` with moefast's dispatch.

    ``physical_to_logical`` is the engine's map int [layers, physical slots] (or a function
    that returns it, called at the first dispatch: SGLang's map exists only once the model
    is loaded), over ``ep_size`` GPUs (or a function returning it). ``ep_rank`` (or a
    function) orders equal choices to keep tokens on their own GPU. ``cost_model``: balance
    batches for the least step time (without it, every token is routed on its own).
    The replicas of each layer are read once, at its first dispatch: a later change of the
    map (SGLang's `--enable-eplb` rebalancing) is not followed.
    """

    def __init__(
        self,
        physical_to_logical: Any,
        ep_size: int | Callable[[], int],
        *,
        ep_rank: int | Callable[[], int | None] | None = None,
        cost_model: CostModel | None = None,
        check: bool = False,
    ) -> None:
        self._source = physical_to_logical
        self._ep_size = ep_size
        self._ep_rank = ep_rank
        self.cost_model = cost_model
        self.check = check
        self._maps: np.ndarray | None = None
        self._tables: dict[int, ReplicaTable] = {}

    def table(self, layer_id: int) -> ReplicaTable:
        """The replicas of layer ``layer_id``, read at its first use."""
        if layer_id not in self._tables:
            if self._maps is None:
                source = self._source() if callable(self._source) else self._source
                maps = backend_of(source).to_numpy(source)
                if maps.ndim != 2:
                    raise ValueError(
                        "physical_to_logical must be int [layers, physical slots],"
                        f" got shape {maps.shape}"
                    )
                self._maps = maps
            if not 0 <= layer_id < self._maps.shape[0]:
                raise ValueError(
                    f"layer {layer_id} is not in the map of {self._maps.shape[0]} layers"
                )
            size = self._ep_size() if callable(self._ep_size) else self._ep_size
            rank = self._ep_rank() if callable(self._ep_rank) else self._ep_rank
            self._tables[layer_id] = ReplicaTable(self._maps[layer_id], size, rank=rank)
        return self._tables[layer_id]

    def __call__(self, topk_ids: Any, info: Any) -> Any:
        if info is None:
            return topk_ids
        layer_id = getattr(info, LAYER_ATTRIBUTE, None)
        if layer_id is None:
            raise RuntimeError(
                "the dispatch info carries no layer id: enable the dispatch with"
                " moefast.dispatch.sglang.install_sglang()"
            )
        return route(
            topk_ids, self.table(int(layer_id)), cost_model=self.cost_model, check=self.check
        )


def install_sglang(
    *, cost_model: CostModel | None = None, modules: dict[str, Any] | None = None
) -> SglangDispatch:
    """Replaces SGLang's dispatch with moefast's in this process (call it before the model
    runs, in every process SGLang starts: see docs/guides/dispatch.md#sglang). The replicas come
    from SGLang's expert location metadata (what ``--init-expert-location`` loaded), its
    EP size and rank from SGLang's process groups.

    ``modules`` stands in for SGLang's modules (tests); by default they are imported."""
    mods = modules if modules is not None else _import_sglang()
    where = mods[_DISPATCH_MODULE]
    topk = mods[_TOPK_MODULE]
    info_class = where.ExpertLocationDispatchInfo

    def metadata() -> Any:
        found = where.get_global_expert_location_metadata()
        if found is None:
            raise RuntimeError(
                "SGLang has no expert location metadata: pass --init-expert-location"
            )
        return found

    dispatch = SglangDispatch(
        lambda: metadata().physical_to_logical_map,
        lambda: int(metadata().ep_size),
        ep_rank=mods.get("ep_rank"),
        cost_model=cost_model,
    )
    make = info_class.init_new.__func__

    def init_new(cls: type, layer_id: int, *args: Any, **kwargs: Any) -> Any:
        info = make(cls, layer_id, *args, **kwargs)
        if info is not None:
            object.__setattr__(info, LAYER_ATTRIBUTE, layer_id)
        return info

    info_class.init_new = classmethod(init_new)
    # SGLang calls the dispatch from a torch.compile'd function; the dispatch reads counts
    # on the host, so it runs eagerly.
    torch = sys.modules.get("torch")
    function = torch.compiler.disable(dispatch) if torch is not None else dispatch
    where.topk_ids_logical_to_physical = function
    topk.topk_ids_logical_to_physical = function
    return dispatch


def _import_sglang() -> dict[str, Any]:
    # SGLang is optional: only an engine process that installs the dispatch imports it.
    mods: dict[str, Any] = {
        name: importlib.import_module(name) for name in (_DISPATCH_MODULE, _TOPK_MODULE)
    }
    distributed = importlib.import_module("sglang.srt.distributed")
    mods["ep_rank"] = distributed.get_moe_expert_parallel_rank
    return mods
