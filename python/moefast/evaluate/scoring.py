"""Scoring placements token by token, with bootstrap 95% intervals of the gain.

Costs are summed per bootstrap unit (a request, or a block of consecutive tokens; see
`moefast.splits.bootstrap_units`) and per layer, so an interval resamples units, not tokens,
and folds of a cross-validation add their test tokens into one set of sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from moefast._core import Placement, SubsetTable, dispatch_costs, lower_bound, subset_costs
from moefast._util.parallel import per_core
from moefast.evaluate.comparison import BASELINES, Comparison
from moefast.io.engines.dispatch import check_dispatch, dispatch_maps
from moefast.trace import Trace

#: Bootstrap resamples behind every interval.
RESAMPLES = 1000


def _subset_keys(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """One sortable key per row of ascending ids [n, k]: packed into uint64 where they fit."""
    n, k = ids.shape
    bits = max(1, math.ceil(math.log2(num_experts))) if num_experts > 1 else 1
    if bits * k <= 64:
        key = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            key = (key << np.uint64(bits)) | ids[:, j].astype(np.uint64)
        return key
    row = np.ascontiguousarray(ids.astype(np.int64))
    return row.view(np.dtype((np.void, 8 * k))).reshape(n)


def token_rows(table: SubsetTable, topk: np.ndarray) -> np.ndarray:
    """int [tokens]: the row of ``table`` holding each token's subset (``topk`` int [tokens, k],
    every subset must be in the table)."""
    tokens = _subset_keys(np.sort(topk, axis=1), table.num_experts)
    rows = _subset_keys(table.subsets, table.num_experts)
    order = np.argsort(rows, kind="stable")
    found = order[np.minimum(np.searchsorted(rows[order], tokens), len(order) - 1)]
    if not np.array_equal(rows[found], tokens):
        raise ValueError("some token's subset is not in the table")
    return found


def token_costs(
    topk: np.ndarray,
    num_experts: int,
    placements: Sequence[Placement],
    dispatch: str = "best",
    *,
    seed: int = 0,
) -> np.ndarray:
    """float [placements, tokens]: each token's cost (expert rounds) under each placement, for
    one layer's ``topk`` int [tokens, k], when ``dispatch`` picks the replicas
    (`moefast.io.engines.dispatch.DISPATCHES`; "best": the cost model's own choice; a rule's
    cost is its expectation over source ranks or draws, ``seed`` for sampled draws)."""
    if check_dispatch(dispatch) == "best":
        return _layer_costs(topk, num_experts, placements)[0]
    table, rows = SubsetTable.from_topk_with_rows(np.ascontiguousarray(topk), num_experts)
    return np.stack(
        [
            dispatch_costs(table, p, m, seed)[rows]
            for p in placements
            for m in dispatch_maps([p], dispatch)
        ]
    )


def _layer_costs(
    topk: np.ndarray,
    num_experts: int,
    placements: Sequence[Placement],
    num_gpus: int = 1,
    table: SubsetTable | None = None,
    weights: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """`token_costs` and the layer's lower bound on ``num_gpus`` GPUs, from one table
    (``table``: the unweighted, unpruned table of ``topk`` when the caller has it, with
    ``rows``, each token's row of it, where the caller has those too). The bound is the
    collision bound of the tokens (with their ``weights``) for placements with at most
    as many experts per GPU as the fullest GPU of ``placements``: it holds for each of
    them."""
    if table is None:
        table, rows = SubsetTable.from_topk_with_rows(np.ascontiguousarray(topk), num_experts)
    elif rows is None:
        rows = token_rows(table, topk)
    costs = np.stack([subset_costs(table, p)[rows].astype(np.float64) for p in placements])
    slots = max(int(p.slots_used.max()) for p in placements) if placements else None
    if slots is None or slots * num_gpus < num_experts or placements[0].num_gpus != num_gpus:
        return costs, lower_bound(table, num_gpus)
    if weights is not None:
        table = SubsetTable.from_topk(np.ascontiguousarray(topk), num_experts, weights)
    return costs, lower_bound(table, num_gpus, slots)


class UnitSums:
    """Cost sums per (bootstrap unit, layer) for each method, and token weight per unit."""

    def __init__(
        self, num_units: int, num_layers: int, methods: Sequence[str], num_gpus: int = 1
    ) -> None:
        self.weight = np.zeros(num_units)
        self.sums = {m: np.zeros((num_units, num_layers)) for m in methods}
        self.num_gpus = num_gpus
        self.bound_sums = np.zeros(num_layers)  # lower bound x weight of each scored part

    def add(
        self,
        trace: Trace,
        units: np.ndarray,
        placements: Mapping[str, Sequence[Placement]],
        tables: Sequence[SubsetTable] | None = None,
        rows: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Score ``trace`` (the tokens of ``units``) under each method's per-layer placements
        (``tables``: the trace's unweighted tables, one per layer, when the caller has them,
        and ``rows``, each token's row of them, where it has those too; the costs are the
        same, the tables are not built a second time)."""
        num_units = len(self.weight)
        w = np.ones(trace.num_tokens) if trace.weights is None else trace.weights
        self.weight += np.bincount(units, weights=w, minlength=num_units)
        methods = list(placements)

        def layer(position: int) -> tuple[np.ndarray, float]:
            costs, bound = _layer_costs(
                trace.topk[:, position, :],
                trace.num_experts,
                [placements[m][position] for m in methods],
                self.num_gpus,
                None if tables is None else tables[position],
                trace.weights,
                None if rows is None else rows[position],
            )
            sums = [np.bincount(units, weights=c * w, minlength=num_units) for c in costs]
            return np.stack(sums), bound

        per_layer = per_core(layer, range(trace.num_layers))
        for position, (sums, bound) in enumerate(per_layer):
            for i, m in enumerate(methods):
                self.sums[m][:, position] += sums[i]
            self.bound_sums[position] += bound * w.sum()

    def lower_bounds(self) -> np.ndarray:
        """float [layers]: the weighted mean lower bound of the scored tokens."""
        return self.bound_sums / self.weight.sum()

    def costs(self) -> dict[str, np.ndarray]:
        """method -> float [layers]: the weighted mean cost per token."""
        total = self.weight.sum()
        return {m: s.sum(axis=0) / total for m, s in self.sums.items()}

    def gain_samples(
        self, main: str, resamples: int = RESAMPLES, seed: int = 0
    ) -> np.ndarray | None:
        """Bootstrap resamples of the model's gain of ``main`` over the per-layer best
        baseline, float [resamples]; None without baselines or with fewer than two units.
        The same seed and units give the same resamples, so two `UnitSums` over the same
        test tokens give paired samples."""
        baselines = [m for m in BASELINES if m in self.sums and m != main]
        used = np.nonzero(self.weight > 0)[0]
        if not baselines or main not in self.sums or len(used) < 2:
            return None
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(len(used), np.full(len(used), 1 / len(used)), size=resamples)
        # Cast once (the counts are exact in float64), not once per product below.
        counts = counts.astype(np.float64)
        weight = (counts @ self.weight[used])[:, None]
        mean = {m: (counts @ self.sums[m][used]) / weight for m in (main, *baselines)}
        best = np.min([mean[m] for m in baselines], axis=0).sum(axis=1)
        return (best - mean[main].sum(axis=1)) / best

    def gain_interval(
        self, main: str, resamples: int = RESAMPLES, seed: int = 0
    ) -> tuple[float, float] | None:
        """Bootstrap 95% interval (percentiles 2.5 and 97.5) of the model's gain."""
        samples = self.gain_samples(main, resamples, seed)
        if samples is None:
            return None
        low, high = np.percentile(samples, [2.5, 97.5])
        return float(low), float(high)

    def comparison(
        self,
        layer_ids: Sequence[int],
        main: str,
        basis: str,
        note: str,
        units: str,
        placements: Mapping[str, Sequence[Placement]] | None = None,
        seed: int = 0,
    ) -> Comparison:
        costs = self.costs()
        return Comparison(
            list(layer_ids),
            costs,
            self.lower_bounds(),
            main,
            {m: list(p) for m, p in (placements or {}).items()},
            basis,
            note,
            self.gain_interval(main, seed=seed),
            units,
        )
