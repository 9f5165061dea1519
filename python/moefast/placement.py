"""Placements of whole models: one `Placement` per MoE layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from moefast._core import Placement, expected_cost, fill_free_slots
from moefast._util.checks import check_int, check_layer_ids
from moefast.trace import Trace

if TYPE_CHECKING:
    from moefast.evaluate.comparison import Comparison


#: The engine formats' writer and reader behind `ModelPlacement.save` and `.load`
#: (`moefast.io.engines.save_placement`, `load_placement`). They sit in the io layer, above
#: this one, since they read and write ModelPlacement; `moefast.io.engines` puts them here
#: when it is imported, which `import moefast` does.
ENGINE_FILES: dict[str, Callable[..., Any]] = {}


@dataclass
class ModelPlacement:
    """One placement per MoE layer of a model, with what produced it.

    ``layer_costs`` holds each layer's expected cost (expert rounds per token), held-out or
    in-sample as ``settings["cost_basis"]`` says, ``lower_bounds`` each layer's lower bound
    on the same tokens (`moefast.lower_bound` with the slots: no placement of these slots
    costs less; the gap is ``layer_costs / lower_bounds - 1``);
    ``settings`` records the options that produced the placement (method, coverage, ...);
    ``evaluation`` (from `moefast.plan`, not saved in files) compares it with the baselines;
    ``slots`` (int [layers, num_gpus * slots_per_gpu], optional) is the expert of each
    physical slot, slot p on GPU p // slots_per_gpu, as an engine holds it: set for maps
    read from engine files or made by EPLB, and written verbatim by the engine writers. It
    may hold an expert twice on one GPU (DeepSeek's EPLB does); the costs, like the
    placements, count such an expert once on that GPU (a decode token reaches it once), so
    the repeat is a slot that serves nothing (`repeated_slots`).
    """

    placements: list[Placement]
    slots_per_gpu: int
    layer_ids: list[int] = field(default_factory=list)
    layer_costs: np.ndarray | None = None
    lower_bounds: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    evaluation: Comparison | None = field(default=None, repr=False, compare=False)
    slots: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.placements is None or len(self.placements) == 0:
            raise ValueError("a ModelPlacement needs at least one layer")
        self.placements = list(self.placements)
        for i, p in enumerate(self.placements):
            if not isinstance(p, Placement):
                raise TypeError(
                    f"placements[{i}] must be a moefast.Placement, got {type(p).__name__}"
                )
        self.slots_per_gpu = check_int("slots_per_gpu", self.slots_per_gpu)
        gpus = {p.num_gpus for p in self.placements}
        experts = {p.num_experts for p in self.placements}
        if len(gpus) != 1 or len(experts) != 1:
            raise ValueError(
                f"all layers must have the same experts and GPUs, got num_experts {sorted(experts)}"
                f" and num_gpus {sorted(gpus)}"
            )
        if self.layer_ids is None or len(self.layer_ids) == 0:  # an array has no truth value
            self.layer_ids = list(range(len(self.placements)))
        self.layer_ids = check_layer_ids(self.layer_ids)
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise ValueError(f"layer_ids repeat a layer: {self.layer_ids}")
        if len(self.layer_ids) != len(self.placements):
            raise ValueError(
                f"layer_ids has {len(self.layer_ids)} entries for {len(self.placements)} layers"
            )
        for i, p in enumerate(self.placements):
            most = int(p.slots_used.max())
            if most > self.slots_per_gpu:
                raise ValueError(
                    f"layer {self.layer_ids[i]} puts {most} experts on one GPU,"
                    f" more than slots_per_gpu = {self.slots_per_gpu}"
                )
        for name in ("layer_costs", "lower_bounds"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64)
                if value.shape != (len(self.placements),):
                    raise ValueError(f"{name} must have one entry per layer")
                setattr(self, name, value)
        if self.slots is not None:
            self.slots = self._checked_slots(self.slots)

    def _checked_slots(self, slots: Any) -> np.ndarray:
        """The slot map as int64 [layers, G * slots_per_gpu], or ValueError when it does not
        hold exactly each layer's placement."""
        array = np.asarray(slots)
        shape = (len(self.placements), self.num_gpus * self.slots_per_gpu)
        if array.shape != shape or (array.size and array.dtype.kind not in "iu"):
            raise ValueError(
                f"slots must be int [layers, num_gpus * slots_per_gpu] = {list(shape)},"
                f" got {array.dtype} {list(array.shape)}"
            )
        array = array.astype(np.int64)
        if array.min() < 0 or array.max() >= self.num_experts:
            raise ValueError(f"slots hold an expert id outside [0, {self.num_experts})")
        gpu = np.arange(shape[1]) // self.slots_per_gpu
        for i, p in enumerate(self.placements):
            held = np.zeros((self.num_experts, self.num_gpus), dtype=bool)
            held[array[i], gpu] = True
            if not np.array_equal(held, p.replicas):
                raise ValueError(
                    f"slots of layer {self.layer_ids[i]} do not hold the layer's placement"
                )
        return array

    @property
    def repeated_slots(self) -> np.ndarray:
        """int [layers]: slots of the slot map holding an expert already in another slot of
        the same GPU (they serve no decode token); zeros without a slot map."""
        if self.slots is None:
            return np.zeros(len(self.placements), dtype=np.int64)
        held = self.replicas().sum(axis=(1, 2))
        return self.slots.shape[1] - held

    def __len__(self) -> int:
        return len(self.placements)

    def __getitem__(self, index: int) -> Placement:
        return self.placements[index]

    def __iter__(self) -> Iterator[Placement]:
        return iter(self.placements)

    @property
    def num_experts(self) -> int:
        return self.placements[0].num_experts

    @property
    def num_gpus(self) -> int:
        return self.placements[0].num_gpus

    @property
    def expected_cost(self) -> float:
        """The model's expected decode cost: the sum of its layers' (expert rounds per token)."""
        if self.layer_costs is None:
            raise ValueError("this ModelPlacement carries no layer costs")
        return float(self.layer_costs.sum())

    def evaluate(self, trace: Trace) -> np.ndarray:
        """Expected cost of this placement on ``trace``, float [trace layers] in expert rounds
        per token: each trace layer is scored with the placement of the same layer id."""
        index = {layer: i for i, layer in enumerate(self.layer_ids)}
        absent = [layer for layer in trace.layer_ids if layer not in index]
        if absent:
            raise ValueError(f"no placement for trace layer {absent[0]} (has {self.layer_ids})")
        if trace.num_experts != self.num_experts:
            raise ValueError(
                f"the trace has {trace.num_experts} experts, the placement {self.num_experts}"
            )
        return np.array(
            [
                expected_cost(trace.table(position), self.placements[index[layer]])
                for position, layer in enumerate(trace.layer_ids)
            ]
        )

    def placements_for(self, layer_ids: Sequence[int]) -> list[Placement]:
        """The placements of the given model layer ids, in that order."""
        index = {layer: i for i, layer in enumerate(self.layer_ids)}
        absent = [layer for layer in layer_ids if layer not in index]
        if absent:
            raise ValueError(f"no placement for layer {absent[0]} (has {self.layer_ids})")
        return [self.placements[index[layer]] for layer in layer_ids]

    def replicas(self) -> np.ndarray:
        """bool array [layers, num_experts, num_gpus]."""
        return np.stack([p.replicas for p in self.placements])

    @classmethod
    def from_slots(
        cls, slots: np.ndarray | Sequence[Sequence[int]], num_gpus: int, **kwargs: Any
    ) -> ModelPlacement:
        """From a physical-to-logical map int [layers, P] (EPLB's ``phy2log``: slot p on GPU
        p // (P / num_gpus)), kept as ``slots``; ``num_experts=`` when the map may miss the
        highest ids (every expert needs a slot)."""
        array = np.asarray(slots)
        if array.ndim != 2 or array.dtype.kind not in "iu" or array.size == 0:
            raise ValueError(f"slots must be a non-empty int [layers, P] map, got {array.shape}")
        num_gpus = check_int("num_gpus", num_gpus)
        if array.shape[1] % num_gpus:
            raise ValueError(f"{array.shape[1]} slots cannot be split over {num_gpus} GPUs")
        if array.min() < 0:
            raise ValueError("slots hold a negative expert id")
        experts = kwargs.pop("num_experts", None)
        experts = int(array.max()) + 1 if experts is None else check_int("num_experts", experts)
        if array.max() >= experts:
            raise ValueError(f"slots hold expert {int(array.max())} of {experts} experts")
        per_gpu = array.shape[1] // num_gpus
        gpu = np.arange(array.shape[1]) // per_gpu
        placements = []
        for row in array:
            held = np.zeros((experts, num_gpus), dtype=bool)
            held[row, gpu] = True
            placements.append(Placement(held))
        return cls(placements, per_gpu, slots=array, **kwargs)

    @classmethod
    def from_replicas(
        cls, replicas: np.ndarray | Sequence[np.ndarray], slots_per_gpu: int, **kwargs: Any
    ) -> ModelPlacement:
        """From a bool array [layers, num_experts, num_gpus]."""
        return cls(
            [Placement(np.asarray(r, dtype=bool)) for r in replicas], slots_per_gpu, **kwargs
        )

    def save(
        self,
        path,
        format: str = "json",
        model: Any = None,
        num_layers: int | None = None,
        moe_layers: Sequence[int] | None = None,
        mtp: bool | None = None,
    ) -> dict[str, Any]:
        """Write this placement for an engine and return the engine settings the file needs:
        see `moefast.io.engines.save_placement` (``model`` is a `moefast.io.layouts` preset
        name)."""
        return ENGINE_FILES["save"](self, path, format, model, num_layers, moe_layers, mtp)

    def filled(self, expert_load: np.ndarray) -> ModelPlacement:
        """A copy whose GPUs with free slots get replicas of the experts of highest load per
        replica (float [layers, E]), never two replicas of one expert on a GPU."""
        load = np.asarray(expert_load, dtype=np.float64)
        if load.shape != (len(self), self.num_experts):
            raise ValueError(
                f"expert_load must be float [layers, E] = [{len(self)}, {self.num_experts}],"
                f" got shape {load.shape}"
            )
        placements = [
            fill_free_slots(p, self.slots_per_gpu, row)
            for p, row in zip(self.placements, load, strict=True)
        ]
        # A slot map stays only when nothing changed: filling replaces repeats.
        same = all(
            np.array_equal(a.replicas, b.replicas)
            for a, b in zip(placements, self.placements, strict=True)
        )
        return ModelPlacement(
            placements,
            self.slots_per_gpu,
            self.layer_ids,
            None,
            None,
            dict(self.settings),
            slots=self.slots if same else None,
        )

    @classmethod
    def load(cls, path, format: str | None = None, **options: Any) -> ModelPlacement:
        """Read a placement file: see `moefast.io.engines.load_placement`."""
        return ENGINE_FILES["load"](path, format, **options)
