"""Choosing the estimator to plan on by cross-validation on the train part only.

Candidates are the plain empirical table (pruned to the user's coverage), the table shrunk
toward the pair model of `moefast.estimators` with a few strengths, and the plain table at
other coverages. Each is planned on k-1 folds of the train part and scored on the last;
the plain table is kept unless a candidate is cheaper by more than `MARGIN`. When the train
part already pins down the co-activation the optimizer acts on (the counts of expert pairs
have a mean relative sampling error below `SETTLED_PAIR_ERROR`), the plain table is kept
without any search, so large traces pay only for counting pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moefast._core import Placement, SubsetTable, expected_cost
from moefast.coactivation import coactivation
from moefast.trace import Trace

#: Relative cross-validated saving a candidate needs over the plain table to be chosen.
MARGIN = 0.01
#: Below this mean relative sampling error of pair counts the empirical table is kept as is.
SETTLED_PAIR_ERROR = 0.05
#: Folds of the cross-validation.
FOLDS = 3
#: Fewest train tokens for a cross-validation (fewer leave folds of a handful of tokens).
MIN_SELECTION_TOKENS = 150
SHRINK_STRENGTHS = (0.25,)


@dataclass(frozen=True)
class Estimator:
    """How a layer's train table becomes the table the optimizer plans on."""

    shrink: float = 0.0  # share of the pair model mixed into the empirical frequencies
    coverage: float = 0.99  # share of the (shrunk) table's mass kept by pruning

    @property
    def name(self) -> str:
        if self.shrink == 0:
            return f"plain table (coverage {self.coverage:g})"
        return f"shrunk {self.shrink:g} toward the pair model (coverage {self.coverage:g})"


@dataclass
class Selection:
    """The chosen estimator, and the cross-validated cost of each candidate (empty if none ran)."""

    estimator: Estimator
    note: str
    cv_costs: dict[Estimator, float]


#: Plans the layers of tables with an estimator: (tables, estimator) -> placements.
LayerPlanner = Callable[[Sequence[SubsetTable], Estimator], list[Placement]]


def pair_count_error(trace: Trace, tables: Sequence[SubsetTable] | None = None) -> float:
    """Mean over layers of the relative sampling error of expert-pair counts, weighted by
    the pairs' counts: sum(sqrt(c)) / sum(c) over pairs (a Poisson count c has relative
    error 1/sqrt(c)). Tokens count once each, whatever their weights; ``tables`` (the trace's
    own, unweighted) saves building them again."""
    errors = []
    for position in range(trace.num_layers):
        if tables is not None and trace.weights is None:
            table = tables[position]
        else:
            table = SubsetTable.from_topk(trace.topk[:, position, :], trace.num_experts)
        counts = np.triu(coactivation(table), 1)
        counts = counts[counts > 0]
        errors.append(float(np.sqrt(counts).sum() / counts.sum()) if counts.size else 1.0)
    return float(np.mean(errors))


def candidates(coverage: float) -> list[Estimator]:
    plain = Estimator(0.0, coverage)
    others = [Estimator(s, coverage) for s in SHRINK_STRENGTHS]
    others += [Estimator(0.0, c) for c in (1.0,) if c != coverage]
    return [plain, *others]


def select_estimator(
    train: Trace,
    planner: LayerPlanner,
    coverage: float,
    by: str = "time",
    seed: int = 0,
    tables: Sequence[SubsetTable] | None = None,
) -> Selection:
    """The estimator with the lowest cost on held-out folds of ``train`` (``tables``: its
    subset tables, when the caller has them)."""
    plain = Estimator(0.0, coverage)
    if train.num_tokens < MIN_SELECTION_TOKENS:
        return Selection(plain, f"{plain.name}: too few train tokens to cross-validate", {})
    error = pair_count_error(train, tables)
    if error < SETTLED_PAIR_ERROR:
        return Selection(
            plain,
            f"{plain.name}: pair counts of the train part have a {100 * error:.1f}% sampling"
            f" error (< {100 * SETTLED_PAIR_ERROR:.0f}%), no search needed",
            {},
        )
    if by == "request" and (train.request_ids is None or len(np.unique(train.request_ids)) < FOLDS):
        by = "time"
    folds = train.folds(FOLDS, by=by, seed=seed)
    options = candidates(coverage)
    cost = {e: 0.0 for e in options}
    for fold_train, fold_test in folds:
        tests = fold_test.tables()
        share = fold_test.num_tokens / train.num_tokens
        plan_tables = fold_train.tables()
        for e in options:
            placements = planner(plan_tables, e)
            cost[e] += share * sum(
                expected_cost(t, p) for t, p in zip(tests, placements, strict=True)
            )
    best = min(options, key=lambda e: cost[e])
    if cost[best] > (1 - MARGIN) * cost[plain]:
        best = plain
    saving = 1 - cost[best] / cost[plain]
    note = (
        f"{best.name}, chosen by {FOLDS}-fold cross-validation on the train part"
        f" ({100 * saving:.1f}% below the plain table there)"
    )
    return Selection(best, note, cost)
