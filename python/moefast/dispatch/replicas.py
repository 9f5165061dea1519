"""Where each logical expert's replicas sit, as the dispatch reads it: per expert, one
physical slot on each GPU that holds it (a second slot of the same expert on the same GPU
serves the same tokens no faster, so it is never a different choice), in the order the
dispatch prefers among equally good choices.

Built from the engine's physical-to-logical map of one layer (slot p on GPU
p // slots_per_gpu, as SGLang, TensorRT-LLM and DeepSeek's EPLB lay slots out) or from a
`Placement`."""

from __future__ import annotations

from typing import Any

import numpy as np

from moefast._core import Placement
from moefast._util.checks import check_int
from moefast.io.engines.slots import gpu_slots

#: Largest GPU count the dispatch takes (GPU ids are compared as int64).
MAX_DISPATCH_GPUS = 1 << 20


class ReplicaTable:
    """One layer's replicas for the dispatch.

    ``physical[e, j]`` is the physical slot of logical expert e's j-th replica and
    ``gpu[e, j]`` its GPU, for j < ``count[e]`` (distinct GPUs); entries past the count
    repeat replica 0. With ``rank`` (the source GPU of the tokens routed), each expert's
    replicas are ordered by distance from that GPU ((gpu - rank) mod G), so that among
    choices of equal cost the dispatch keeps tokens on their own GPU; without it, by GPU.
    """

    def __init__(self, physical_to_logical: Any, num_gpus: int, *, rank: int | None = None) -> None:
        slots = np.asarray(physical_to_logical)
        if slots.ndim != 1 or slots.size == 0:
            raise ValueError(
                "physical_to_logical must be one layer's map: int [num_physical_slots],"
                f" got shape {slots.shape}"
            )
        if not np.issubdtype(slots.dtype, np.integer):
            raise TypeError(f"physical_to_logical must hold integer expert ids, got {slots.dtype}")
        num_gpus = check_int("num_gpus", num_gpus, low=1)
        if num_gpus > MAX_DISPATCH_GPUS:
            raise ValueError(f"num_gpus must be at most {MAX_DISPATCH_GPUS}, got {num_gpus}")
        if slots.size % num_gpus:
            raise ValueError(
                f"{slots.size} physical slots do not divide over {num_gpus} GPUs:"
                " every GPU holds the same number of slots"
            )
        if slots.min() < 0:
            raise ValueError(f"physical_to_logical holds a negative expert id {int(slots.min())}")
        num_experts = int(slots.max()) + 1
        missing = np.setdiff1d(np.arange(num_experts), slots)
        if missing.size:
            raise ValueError(
                f"logical expert {int(missing[0])} has no physical slot: every expert below"
                f" the largest id ({num_experts - 1}) needs one"
            )
        if rank is not None:
            rank = check_int("rank", rank, low=0, high=num_gpus - 1)
        per_gpu = slots.size // num_gpus
        gpu_of_slot = np.arange(slots.size) // per_gpu
        key = gpu_of_slot if rank is None else (gpu_of_slot - rank) % num_gpus
        # First slot of each (expert, GPU), experts ascending, preferred GPUs first.
        order = np.lexsort((np.arange(slots.size), key, slots))
        pairs = slots[order] * num_gpus + gpu_of_slot[order]
        first = np.ones(order.size, dtype=bool)
        first[1:] = pairs[1:] != pairs[:-1]
        order = order[first]
        experts = slots[order]
        count = np.bincount(experts, minlength=num_experts)
        start = np.cumsum(count) - count
        col = np.arange(order.size) - start[experts]
        width = int(count.max())
        physical = np.repeat(order[start][:, None], width, axis=1)
        physical[experts, col] = order
        self.physical = physical.astype(np.int64)
        self.gpu = (self.physical // per_gpu).astype(np.int64)
        self.count = count.astype(np.int64)
        self.num_gpus = num_gpus
        self.slots_per_gpu = per_gpu
        self.rank = rank
        self._on: dict[Any, tuple[Any, Any, Any]] = {}
        self._placement: Placement | None = None

    @classmethod
    def from_placement(
        cls, placement: Placement, slots_per_gpu: int, *, rank: int | None = None
    ) -> ReplicaTable:
        """The table of a placement written with each GPU's experts ascending in its slots
        (`moefast.io.engines.slots.gpu_slots`, the layout moefast's engine files use)."""
        return cls(gpu_slots(placement, slots_per_gpu).ravel(), placement.num_gpus, rank=rank)

    @property
    def placement(self) -> Placement:
        """The placement the table describes (each expert on the GPUs that hold it)."""
        if self._placement is None:
            lists = [self.gpu[e, : self.count[e]].tolist() for e in range(self.num_experts)]
            self._placement = Placement.from_lists(lists, num_gpus=self.num_gpus)
        return self._placement

    @property
    def num_experts(self) -> int:
        return int(self.count.size)

    @property
    def replicated(self) -> np.ndarray:
        """bool [E]: experts on more than one GPU."""
        return self.count > 1

    def arrays(self, ops: Any) -> tuple[Any, Any, Any]:
        """(physical, gpu, count) as ``ops``' arrays, converted once per device."""
        key = (ops.name, str(getattr(ops, "device", "host")))
        if key not in self._on:
            self._on[key] = (
                ops.asarray(self.physical),
                ops.asarray(self.gpu),
                ops.asarray(self.count),
            )
        return self._on[key]

    def __repr__(self) -> str:
        return (
            f"ReplicaTable(experts={self.num_experts}, gpus={self.num_gpus},"
            f" slots_per_gpu={self.slots_per_gpu}, replicated={int(self.replicated.sum())})"
        )
