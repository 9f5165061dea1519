"""Choosing the estimator to plan on by cross-validation on the train part only.

Candidates are the plain empirical table pruned to the user's coverage and the unpruned
table. Each is planned on k-1 folds of the train part, with the same greedy seeds for every
candidate (a paired comparison), and scored on the last; the plain table is kept unless a
candidate is cheaper, averaged over folds, by more than `MARGIN` and by more than the
fold-to-fold spread of its saving. When the train part already pins down the co-activation
the optimizer acts on (the counts of expert pairs have a mean relative sampling error below
`SETTLED_PAIR_ERROR`), the plain table is kept without any search, so large traces pay only
for counting pairs.

A table shrunk toward a model of expert and pair marginals was a candidate once and was
dropped: on the real traces of `benches/bench_heldout.py` it lost 0.5 points of held-out gain
on mean against the plain table, and up to 4.5 points in a case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moefast._core import Placement, SubsetTable, expected_cost
from moefast.evaluate.coactivation import coactivation
from moefast.trace import Trace

#: The tables a plan may be planned on: "plain" (the empirical table pruned to the
#: coverage) or "auto" (that or the unpruned one, chosen by cross-validation).
ESTIMATOR_CHOICES = ("plain", "auto")

#: Relative cross-validated saving a candidate needs over the plain table to be chosen.
MARGIN = 0.01
#: Below this mean relative sampling error of pair counts the empirical table is kept as is.
SETTLED_PAIR_ERROR = 0.05
#: Folds of the cross-validation.
FOLDS = 3
#: Fewest train tokens for a cross-validation (fewer leave folds of a handful of tokens).
MIN_SELECTION_TOKENS = 150
#: Greedy seeds (``seed``, ``seed + 1``, ...) every candidate is planned with on every fold.
CV_SEEDS = 2


@dataclass(frozen=True)
class Estimator:
    """How a layer's train table becomes the table the optimizer plans on."""

    coverage: float = 0.99  # share of the table's mass kept by pruning

    @property
    def name(self) -> str:
        return f"plain table (coverage {self.coverage:g})"


@dataclass
class Selection:
    """The chosen estimator, and the cross-validated cost of each candidate (empty if none ran)."""

    estimator: Estimator
    note: str
    cv_costs: dict[Estimator, float]


#: Plans the layers of tables with an estimator and a seed: (tables, estimator, seed) -> placements.
LayerPlanner = Callable[[Sequence[SubsetTable], Estimator, int], list[Placement]]


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
    """The plain table first, then the unpruned table (when the user prunes)."""
    plain = Estimator(coverage)
    return [plain] if coverage == 1.0 else [plain, Estimator(1.0)]


def select_estimator(
    train: Trace,
    planner: LayerPlanner,
    coverage: float,
    by: str = "time",
    seed: int = 0,
    tables: Sequence[SubsetTable] | None = None,
) -> Selection:
    """The estimator with the lowest cost on held-out folds of ``train`` (``tables``: its
    subset tables, when the caller has them). Every candidate is planned with the same
    `CV_SEEDS` seeds on the same folds, and its cost on a fold is the mean over the seeds: a
    paired comparison, in which a candidate wins only if its saving over the plain table,
    averaged over folds, is above `MARGIN` and above the fold-to-fold spread (standard
    deviation) of that saving."""
    plain = Estimator(coverage)
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
    options = candidates(coverage)
    if len(options) == 1:
        return Selection(plain, f"{plain.name}: the only candidate (nothing pruned)", {})
    folds = train.folds(FOLDS, by=by, seed=seed)
    cost = {e: np.zeros(len(folds)) for e in options}
    for f, (fold_train, fold_test) in enumerate(folds):
        tests = fold_test.tables()
        plan_tables = fold_train.tables()
        for e in options:
            cost[e][f] = np.mean(
                [
                    sum(expected_cost(t, p) for t, p in zip(tests, placed, strict=True))
                    for placed in (planner(plan_tables, e, seed + s) for s in range(CV_SEEDS))
                ]
            )
    savings = {e: 1 - cost[e] / cost[plain] for e in options}
    best = max(options[1:], key=lambda e: float(savings[e].mean()))
    mean, spread = float(savings[best].mean()), float(savings[best].std(ddof=1))
    if mean <= MARGIN or mean <= spread:
        note = (
            f"{plain.name}: no candidate won the {FOLDS}-fold cross-validation on the train part"
            f" ({best.name}: {100 * mean:.1f}% below the plain table, fold-to-fold spread"
            f" {100 * spread:.1f}%)"
        )
        best = plain
    else:
        note = (
            f"{best.name}, chosen by {FOLDS}-fold cross-validation on the train part"
            f" ({100 * mean:.1f}% below the plain table there, fold-to-fold spread"
            f" {100 * spread:.1f}%)"
        )
    shares = np.array([t.num_tokens for _, t in folds]) / train.num_tokens
    return Selection(best, note, {e: float(shares @ c) for e, c in cost.items()})
