"""How a model is served, as an input of the plan: the batch sizes a deployment runs (with
their shares of the steps) and the GPU. `plan(..., profile=)` plans every candidate on the
same train tokens (the co-activation plan, the batch-aware search at each profile size,
EPLB, round-robin, contiguous, the engine's default map and, under an engine's dispatch,
a placement searched for it), scores each on the profile under the dispatch the engine runs
(`moefast.evaluate.serving`) and returns the one of least expected step time. The cheap
candidates are also planned with fewer slots per GPU, down to no redundant experts, so the
number of redundant experts is a choice of the plan (`redundant_flag` names the engine's
setting).

Without a profile `plan` returns its method's placement, as before; the command line
plans for `DEFAULT_PROFILE` when ``--batch-sizes`` is not given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from moefast._core import Placement, SubsetTable
from moefast._util.parallel import per_core
from moefast._util.progress import steps
from moefast.batch.cost_model import GPUS, CostModel
from moefast.batch.times import Routing
from moefast.evaluate.comparison import METHOD_LABELS
from moefast.evaluate.heldout import baseline_placements
from moefast.evaluate.serving import ServingScores, score_candidates
from moefast.io.engines.dispatch import check_dispatch, dispatch_label, engine_dispatch
from moefast.io.engines.slots import default_map, placement_from_slots
from moefast.search.batch import DEFAULT_BATCH_EVALUATIONS, optimize_batch_sizes
from moefast.search.dispatch import search_for_dispatch

#: The decode batch the command line reports beside B = 1 when no profile is given: a
#: typical per-step batch of a decode server (SGLang's and vLLM's defaults admit hundreds
#: of running requests; at 64 a server is neither idle nor saturated).
TYPICAL_DECODE_BATCH = 64

#: Rows the search for the engine's dispatch scores, shared by the layers of a plan: a
#: swap is scored on its layer's whole table with the engine's map drawn again (about
#: 35 ms for a DeepSeek-V3 layer of 200,000 distinct rows on 32 GPUs x 9 slots, 3-5 ms
#: of them the map). 2,000 swaps of 20,000-row layers.
DISPATCH_SEARCH_ROWS = 40_000_000
#: The most swaps each layer's search scores (a layer too large for one within the
#: budget is only the fastest of its starts under the rule).
MAX_LAYER_EVALUATIONS = 200
#: Moves the batch-aware searches of the smallest profile size above 1 re-time, shared by
#: the layers (from `MIN_BATCH_EVALUATIONS` to `optimize_batch`'s own default per layer)
#: when the profile sets no ``max_evaluations``; a larger size gets fewer, so that each
#: size's searches do about the same work (`size_evaluations`). On a DeepSeek-V3 layer
#: (200,000 tokens, 32 GPUs x 9 slots, B = 16 / 64 / 256) 2,000 moves take 0.5 / 0.5 /
#: 1.7 s and keep most of the held-out gain of a search to its end (40,000 moves: 1.9 /
#: 1.9 / 6.2 s).
BATCH_SEARCH_EVALUATIONS = 120_000
MIN_BATCH_EVALUATIONS = 200

#: The map each engine starts from without a placement file.
ENGINE_DEFAULTS = {
    "sglang": "engine default (SGLang: slot p holds expert p % E)",
}
_OTHER_ENGINE = "engine default (slot p holds expert p % E, SGLang's map)"


def redundant_flag(engine: str, redundant: int, num_experts: int) -> str:
    """The engine's setting for ``redundant`` redundant experts of ``num_experts``
    (docs/formats.md), as it is
    written: SGLang's flag, TensorRT-LLM's ``num_slots`` in its MoE load balancer config
    (experts + redundant), vLLM-Ascend's ``num_redundant_experts`` in
    ``--additional-config``'s ``eplb_config``."""
    if engine == "sglang":
        return f"--ep-num-redundant-experts {redundant}"
    if engine == "trtllm":
        return f"num_slots: {num_experts + redundant} in moe_config: load_balancer:"
    if engine == "vllm-ascend":
        return (
            f'--additional-config \'{{"eplb_config": {{"num_redundant_experts":'
            f" {redundant}, ...}}}}'"
        )
    return f"{redundant} redundant experts"


@dataclass(frozen=True)
class ServingProfile:
    """The batch sizes served (one or several) and each one's share of the steps
    (default: equal), the GPU (for cost-model presets), and whether to search a
    batch-aware candidate at each size above 1 (``batch_aware``: the search costs seconds
    to minutes per layer and size; ``max_evaluations`` bounds it), the engine whose
    default map is a candidate, and the simulated steps per size.

    ``dispatch`` (`moefast.io.engines.dispatch.DISPATCHES`; None: the engine's default,
    `engine_dispatch`, "best" for formats that are no engine's) is the replica routing
    every figure is computed under; ``fewer_slots`` also scores the cheap candidates with
    fewer slots per GPU, down to no redundant experts; ``compare_best`` also times every
    candidate under the best replica choice, beside the dispatch."""

    batch_sizes: tuple[int, ...]
    weights: tuple[float, ...] | None = None
    gpu: str = "h100"
    batch_aware: bool = True
    engine: str = "sglang"
    steps: int = 256
    #: Bound on the moves each batch-aware search times (None: `BATCH_SEARCH_EVALUATIONS`
    #: per size, shared by the layers).
    max_evaluations: int | None = None
    dispatch: str | None = None
    fewer_slots: bool = True
    compare_best: bool = False

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
        if self.dispatch is not None:
            check_dispatch(self.dispatch)
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

    @property
    def rule(self) -> str:
        """The dispatch the figures are computed under: ``dispatch``, else the engine's."""
        return self.dispatch if self.dispatch is not None else engine_dispatch(self.engine)

    @property
    def search_size(self) -> int:
        """The size a placement is searched for the dispatch at: the most weighted (the
        smallest of equals)."""
        weights = self.weights or ()
        return self.batch_sizes[max(range(len(weights)), key=lambda i: (weights[i], -i))]


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


def fewer_slots(num_experts: int, num_gpus: int, slots_per_gpu: int) -> tuple[list[int], str]:
    """The slots per GPU below ``slots_per_gpu`` that still hold every expert, from the
    most to the fewest (no redundant expert when G divides E), and why the fewest keeps
    redundant experts ("" when it keeps none)."""
    fewest = math.ceil(num_experts / num_gpus)
    why = ""
    if num_experts % num_gpus:
        why = (
            f"no count without redundant experts: {num_experts} experts do not divide over"
            f" {num_gpus} GPUs (engines give every GPU the same slots), so the fewest is"
            f" {num_gpus * fewest - num_experts} ({fewest} slots per GPU)"
        )
    return list(range(slots_per_gpu - 1, fewest - 1, -1)), why


def redundant_suffix(num_experts: int, num_gpus: int, slots: int) -> str:
    """The words that tell a candidate with fewer slots per GPU apart."""
    return f" ({num_gpus * slots - num_experts} redundant)"


def cheap_candidates(
    plan_tables: Sequence[SubsetTable],
    main: tuple[str, Sequence[Placement] | None],
    num_gpus: int,
    slots_per_gpu: int,
    profile: ServingProfile,
    cost_model: CostModel,
    seed: int,
    suffix: str = "",
) -> dict[str, list[Placement]]:
    """The candidates that take no batch-aware search, each name followed by ``suffix``:
    ``main`` (the plan's own, when given), EPLB, round-robin, contiguous, the engine's
    default map and, under an engine's dispatch, the placement searched for it from them
    (`dispatch_searched`)."""
    name, placements = main
    out: dict[str, list[Placement]] = {}
    if placements is not None:
        out[name + suffix] = list(placements)
    baselines = baseline_placements(
        plan_tables, num_gpus, slots_per_gpu, ("eplb", "round_robin", "contiguous"), seed
    )
    for method, placed in baselines.items():
        out.setdefault(METHOD_LABELS[method] + suffix, placed)
    num_experts = plan_tables[0].num_experts
    default = engine_default(num_experts, num_gpus, slots_per_gpu)
    out[engine_default_label(profile.engine) + suffix] = [default] * len(plan_tables)
    if profile.rule != "best":
        label, searched = dispatch_searched(plan_tables, out, profile, cost_model, seed)
        out[label + suffix] = searched
    return out


def dispatch_searched(
    plan_tables: Sequence[SubsetTable],
    starts: dict[str, list[Placement]],
    profile: ServingProfile,
    cost_model: CostModel,
    seed: int,
) -> tuple[str, list[Placement]]:
    """The candidate's name and, per layer, the placement `search_for_dispatch` finds under
    the profile's dispatch at `ServingProfile.search_size` (expert rounds at B = 1, else
    simulated steps), from the layer's placements of ``starts``, with the swaps of
    `DISPATCH_SEARCH_ROWS` rows scored shared by the layers (at most
    `MAX_LAYER_EVALUATIONS` swaps each), layers in parallel. SGLang's static map draws
    through the layers of a file; the search scores each layer with the draw of a file of that layer
    alone, the scoring with the file's."""
    size = profile.search_size
    rule = profile.rule
    share = DISPATCH_SEARCH_ROWS // max(1, sum(len(t) for t in plan_tables))
    evaluations = min(MAX_LAYER_EVALUATIONS, share)

    def one(i: int) -> Placement:
        return search_for_dispatch(
            plan_tables[i],
            {name: layers[i] for name, layers in starts.items()},
            rule,
            max_evaluations=evaluations,
            seed=seed,
            batch_size=size,
            cost_model=cost_model,
        ).placement

    placed = per_core(one, range(len(plan_tables)))  # the core's costs free the GIL
    return f"searched for {dispatch_label(profile.rule)} (B = {size})", placed


def batch_aware(
    profile: ServingProfile,
    plan_batches: Callable[[list[int]], dict[int, list[Placement]]],
    suffix: str = "",
    have: Collection[str] = (),
) -> dict[str, list[Placement]]:
    """The batch-aware candidates at each profile size above 1 (with
    ``profile.batch_aware``; ``plan_batches(sizes)`` plans every layer for batches of each
    size), but those named in ``have``."""
    if not profile.batch_aware:
        return {}
    names = {b: f"batch-aware (B={b}){suffix}" for b in profile.batch_sizes if b > 1}
    wanted = [b for b, name in names.items() if name not in have]
    if not wanted:
        return {}
    found = plan_batches(wanted)
    return {names[b]: found[b] for b in wanted}


def size_evaluations(sizes: Sequence[int], k: int, num_experts: int, layers: int) -> list[int]:
    """Moves each size's batch-aware search of a layer re-times by default:
    `BATCH_SEARCH_EVALUATIONS` shared by the ``layers`` at the smallest size, fewer at a
    larger one in the ratio of the tokens re-timing a move costs: the sampled tokens (the
    core's default sample, 16 to 512 batches of about 8,192 tokens in all) times the share
    of the batches that a move of one expert touches, 1 - (1 - k / E)^B. Each size's
    searches do about the same work. From `MIN_BATCH_EVALUATIONS` to `optimize_batch`'s
    default per search."""
    share = BATCH_SEARCH_EVALUATIONS / max(1, layers)

    def touched(b: int) -> float:
        sampled = b * min(512, max(16, 8192 // b))  # BatchSearchOptions::default_num_batches
        return sampled * (1.0 - (1.0 - min(1.0, k / num_experts)) ** b)

    smallest = touched(min(sizes))
    return [
        min(
            DEFAULT_BATCH_EVALUATIONS,
            max(MIN_BATCH_EVALUATIONS, int(share * smallest / touched(b))),
        )
        for b in sizes
    ]


def batch_searches(
    plan_tables: Sequence[SubsetTable],
    starts: Sequence[Sequence[Placement]],
    slots_per_gpu: int,
    cost_model: CostModel,
    batch_sizes: Sequence[int],
    *,
    coverage: float = 1.0,
    seed: int = 0,
    max_evaluations: int | None = None,
    progress: bool = False,
) -> dict[int, list[Placement]]:
    """Per size, one placement per layer: the batch-aware searches of each layer for every
    size at once (`optimize_batch_sizes`: each size from the fastest of the layer's
    ``starts``, one list of placements per start, and the smaller sizes' results), on the
    table pruned to ``coverage``, each search re-timing at most ``max_evaluations`` moves
    (None: `size_evaluations`); layers in parallel (the searches free the GIL)."""
    sizes = sorted(batch_sizes)
    n = len(plan_tables)
    if max_evaluations is None:
        table = plan_tables[0]
        bounds: int | list[int] = size_evaluations(sizes, table.k, table.num_experts, n)
    else:
        bounds = max_evaluations

    def one(i: int) -> list[Placement]:
        table = plan_tables[i]
        if coverage < 1.0:
            table = table.prune(coverage=coverage)
        return optimize_batch_sizes(
            table,
            [layers[i] for layers in starts],
            slots_per_gpu,
            cost_model,
            sizes,
            seed=seed,
            max_evaluations=bounds,
        )

    desc = "batch-aware searches, B = " + ", ".join(map(str, sizes))
    with ThreadPoolExecutor(max_workers=max(1, min(n, os.cpu_count() or 1))) as pool:
        per_layer = list(steps(pool.map(one, range(n)), n, desc, progress))
    return {b: [layer[j] for layer in per_layer] for j, b in enumerate(sizes)}


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
    redundant: dict[str, int] | None = None,
) -> ServingScores:
    """The candidates scored on the profile under its dispatch (`score_candidates`;
    ``progress``: one step per candidate on stderr)."""
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
        dispatch=profile.rule,
        redundant=redundant,
        compare_best=profile.compare_best,
    )
