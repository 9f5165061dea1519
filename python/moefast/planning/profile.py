"""How a model is served, as an input of the plan: the batch sizes a deployment runs (with
their shares of the steps) and the GPU. `plan(..., profile=)` plans every candidate on the
same train tokens (the co-activation plan, the batch-aware search at each profile size,
EPLB, round-robin, contiguous and the engine's default map), scores each on the profile
(`moefast.evaluate.serving`) and returns the one of least expected step time.

Without a profile `plan` returns its method's placement, as before; the command line
plans for `DEFAULT_PROFILE` when ``--batch-sizes`` is not given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moefast._core import Placement, SubsetTable
from moefast.batch.cost_model import GPUS, CostModel
from moefast.batch.times import Routing
from moefast.evaluate.comparison import METHOD_LABELS
from moefast.evaluate.heldout import baseline_placements
from moefast.evaluate.serving import ServingScores, score_candidates
from moefast.io.engines.slots import default_map, placement_from_slots

#: The decode batch the command line reports beside B = 1 when no profile is given: a
#: typical per-step batch of a decode server (SGLang's and vLLM's defaults admit hundreds
#: of running requests; at 64 a server is neither idle nor saturated).
TYPICAL_DECODE_BATCH = 64

#: The map each engine starts from without a placement file.
ENGINE_DEFAULTS = {
    "sglang": "engine default (SGLang: slot p holds expert p % E)",
}
_OTHER_ENGINE = "engine default (slot p holds expert p % E, SGLang's map)"


@dataclass(frozen=True)
class ServingProfile:
    """The batch sizes served (one or several) and each one's share of the steps
    (default: equal), the GPU (for cost-model presets), and whether to search a
    batch-aware candidate at each size above 1 (``batch_aware``: the search costs seconds
    to minutes per layer and size; ``max_evaluations`` bounds it), the engine whose
    default map is a candidate, and the simulated steps per size."""

    batch_sizes: tuple[int, ...]
    weights: tuple[float, ...] | None = None
    gpu: str = "h100"
    batch_aware: bool = True
    engine: str = "sglang"
    steps: int = 256
    #: Bound on the moves each batch-aware search times (None: the search's default).
    max_evaluations: int | None = None

    def __post_init__(self) -> None:
        sizes = tuple(self.batch_sizes)
        if not sizes:
            raise ValueError("a serving profile needs at least one batch size")
        for b in sizes:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise ValueError(f"batch sizes must be integers >= 1, got {b!r}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"batch sizes must be distinct, got {sizes}")
        weights = (1.0,) * len(sizes) if self.weights is None else tuple(self.weights)
        if len(weights) != len(sizes):
            raise ValueError(f"{len(weights)} weights for {len(sizes)} batch sizes")
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"weights must be finite and non-negative, got {weights}")
        total = float(sum(weights))
        if total <= 0:
            raise ValueError("the weights of a serving profile must not all be 0")
        if str(self.gpu).lower() not in GPUS:
            raise ValueError(f"unknown gpu {self.gpu!r}; known: {sorted(GPUS)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        order = sorted(range(len(sizes)), key=lambda i: sizes[i])
        object.__setattr__(self, "batch_sizes", tuple(sizes[i] for i in order))
        object.__setattr__(self, "weights", tuple(weights[i] / total for i in order))
        object.__setattr__(self, "gpu", str(self.gpu).lower())

    @classmethod
    def parse(cls, text: str, **options: object) -> ServingProfile:
        """ "1,16,64,256" (equal shares) or "1:0.2,64:0.8" (size:share; shares are
        normalized) as a profile; ``options`` are the other fields."""
        sizes: list[int] = []
        weights: list[float] = []
        try:
            for part in str(text).split(","):
                size, sep, weight = part.strip().partition(":")
                sizes.append(int(size))
                weights.append(float(weight) if sep else 1.0)
        except ValueError:
            raise ValueError(
                "--batch-sizes must be sizes separated by commas, each with an optional"
                f" :share (1,16,64 or 1:0.2,64:0.8), got {text!r}"
            ) from None
        return cls(tuple(sizes), tuple(weights), **options)  # type: ignore[arg-type]


#: What the command line plans for without --batch-sizes: single tokens and a typical
#: decode batch, equal shares, no batch-aware search.
DEFAULT_PROFILE = ServingProfile((1, TYPICAL_DECODE_BATCH), batch_aware=False)


def engine_default_label(engine: str) -> str:
    return ENGINE_DEFAULTS.get(engine, _OTHER_ENGINE)


def engine_default(num_experts: int, num_gpus: int, slots_per_gpu: int) -> Placement:
    """The placement of the map engines start from: slot p (on GPU p // slots) holds
    expert p % E."""
    slots = default_map(num_gpus * slots_per_gpu, num_experts)
    return placement_from_slots(slots, num_gpus, num_experts, "the engine's default map")


def candidates(
    plan_tables: Sequence[SubsetTable],
    main: tuple[str, Sequence[Placement]],
    num_gpus: int,
    slots_per_gpu: int,
    profile: ServingProfile,
    plan_batch: Callable[[int], list[Placement]],
    seed: int,
) -> dict[str, list[Placement]]:
    """Every candidate placement, planned on ``plan_tables`` (the train part): ``main``
    (the plan's own), the batch-aware search at each profile size above 1 (with
    ``profile.batch_aware``; ``plan_batch(B)`` plans every layer for batches of B), the
    baselines and the engine's default map."""
    name, placements = main
    out: dict[str, list[Placement]] = {name: list(placements)}
    if profile.batch_aware:
        for b in profile.batch_sizes:
            label = f"batch-aware (B={b})"
            if b > 1 and label not in out:
                out[label] = plan_batch(b)
    baselines = baseline_placements(
        plan_tables, num_gpus, slots_per_gpu, ("eplb", "round_robin", "contiguous"), seed
    )
    for method, placed in baselines.items():
        out.setdefault(METHOD_LABELS[method], placed)
    num_experts = plan_tables[0].num_experts
    default = engine_default(num_experts, num_gpus, slots_per_gpu)
    out[engine_default_label(profile.engine)] = [default] * len(plan_tables)
    return out


def choose(
    profile: ServingProfile,
    cost_model: CostModel,
    cost_model_note: str,
    candidates_by_name: dict[str, list[Placement]],
    routing: Routing,
    score_tables: Sequence[SubsetTable],
    basis: str,
    note: str,
    seed: int,
    progress: bool = False,
) -> ServingScores:
    """The candidates scored on the profile (`score_candidates`; ``progress``: one step per
    candidate on stderr)."""
    return score_candidates(
        routing,
        score_tables,
        candidates_by_name,
        profile.batch_sizes,
        profile.weights or (),
        cost_model,
        basis=basis,
        note=note,
        cost_model_note=cost_model_note,
        seed=seed,
        steps=profile.steps,
        progress=progress,
    )
