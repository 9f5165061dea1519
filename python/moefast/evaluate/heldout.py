"""Held-out evaluation of plans: which tokens plan, which score, and the comparison that
results, every figure labelled held-out or in-sample.

`choose_split` decides whether a trace is large enough to hold tokens out (and says why not);
`score_methods` scores a method's placements and the baselines on a trace token by token;
`cross_validated` pools k folds, so every token is scored by placements that never saw it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from moefast._core import Placement, SubsetTable
from moefast._util.checks import check_number
from moefast._util.parallel import per_core
from moefast.evaluate.comparison import BASELINES, Comparison
from moefast.evaluate.scoring import UnitSums
from moefast.evaluate.selection import ESTIMATOR_CHOICES
from moefast.search.methods import optimize
from moefast.splits import SPLIT_BY, bootstrap_units, fold_positions, requests_in_order
from moefast.trace import Trace

#: Fewest tokens a trace needs before `plan` holds some out by default.
MIN_HOLDOUT_TOKENS = 500
#: Fewest requests for a split by request (with fewer, one request is a large share).
MIN_SPLIT_REQUESTS = 5

#: Plans the layers of a train trace: (tables) -> one placement per layer.
Planner = Callable[[Sequence[SubsetTable]], list[Placement]]


@dataclass
class Split:
    """The train and test parts of a trace, or why there are none (``test`` is None)."""

    train: Trace | None
    test: Trace | None
    note: str

    @property
    def held_out(self) -> bool:
        return self.test is not None


def default_split_by(trace: Trace) -> str:
    """By request when the trace knows enough requests, else by time."""
    if trace.request_ids is not None and len(np.unique(trace.request_ids)) >= MIN_SPLIT_REQUESTS:
        return "request"
    return "time"


@dataclass(frozen=True)
class Evaluation:
    """Which tokens a plan is planned on and which score it: ``holdout`` of a trace's
    tokens (0 or None: none) are held out when it has at least `MIN_HOLDOUT_TOKENS`,
    ``split_by`` "time" (the last tokens) or "request" (whole requests; the default when the
    trace knows at least 5 requests). The rest are planned on, as a table pruned to
    ``coverage`` of the tokens; ``estimator="auto"`` chooses between that table and the
    unpruned one by cross-validation on the train part (`moefast.evaluate.selection`)."""

    holdout: float | None = 0.2
    split_by: Literal["time", "request"] | None = None
    estimator: Literal["plain", "auto"] = "plain"
    coverage: float = 0.99

    def __post_init__(self) -> None:
        check_holdout(self.holdout)
        if self.split_by is not None and self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY} or None, got {self.split_by!r}")
        if self.estimator not in ESTIMATOR_CHOICES:
            raise ValueError(
                f"estimator must be one of {ESTIMATOR_CHOICES}, got {self.estimator!r}"
            )
        # `coverage < 1.0` would quietly plan on the full table for 2 or NaN.
        coverage = check_number("coverage", self.coverage)
        if not 0 < coverage <= 1:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        object.__setattr__(self, "coverage", coverage)


def check_holdout(holdout: float | None) -> None:
    """A share of tokens to hold out: a number in [0, 1), or None (none)."""
    if holdout is None or holdout == 0:
        return
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)):
        raise TypeError(f"holdout must be a number or None, got {type(holdout).__name__}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")


def choose_split(
    trace: Trace | None, holdout: float | None, split_by: str | None = None, seed: int = 0
) -> Split:
    """Hold ``holdout`` of the tokens out when there are enough of them; otherwise say why not."""
    check_holdout(holdout)
    if holdout is None or holdout == 0:
        return Split(None, None, "held-out evaluation off (holdout=0): figures are in-sample")
    if trace is None:
        return Split(
            None, None, "held-out evaluation off: subset tables carry no tokens to hold out"
        )
    if trace.num_tokens < MIN_HOLDOUT_TOKENS:
        return Split(
            None,
            None,
            f"held-out evaluation off: {trace.num_tokens} tokens, fewer than the"
            f" {MIN_HOLDOUT_TOKENS} needed to hold {100 * holdout:.0f}% out; figures are in-sample",
        )
    by = split_by or default_split_by(trace)
    train, test = trace.split(holdout, by=by, seed=seed)
    note = (
        f"planned on {train.num_tokens} tokens, scored on {test.num_tokens} held-out tokens"
        f" ({'the last ' if by == 'time' else ''}{100 * test.num_tokens / trace.num_tokens:.0f}%,"
        f" split by {by})"
    )
    return Split(train, test, note)


def baseline_placements(
    tables: Sequence[SubsetTable],
    num_gpus: int,
    slots_per_gpu: int,
    methods: Sequence[str] = BASELINES,
    seed: int = 0,
) -> dict[str, list[Placement]]:
    """The engines' placements of every layer, computed from ``tables`` (the train part;
    a thread per core: the core places without the GIL)."""

    def layer(table: SubsetTable) -> list[Placement]:
        return [optimize(table, num_gpus, slots_per_gpu, method=m, seed=seed) for m in methods]

    per_layer = per_core(layer, tables)
    return {m: [placed[i] for placed in per_layer] for i, m in enumerate(methods)}


def _units(trace: Trace) -> tuple[np.ndarray, int, str]:
    units, what = bootstrap_units(trace)
    return units, int(units.max()) + 1, what


def score_methods(
    trace: Trace,
    placements: Mapping[str, Sequence[Placement]],
    num_gpus: int,
    main: str,
    basis: str,
    note: str,
    seed: int = 0,
    tables: Sequence[SubsetTable] | None = None,
    rows: Sequence[np.ndarray] | None = None,
) -> Comparison:
    """Every method's placements scored on ``trace``, with the bootstrap interval of the gain
    (``tables``: the trace's unweighted tables when the caller has built them, ``rows``:
    each token's row of them, when it has those too)."""
    units, count, what = _units(trace)
    sums = UnitSums(count, trace.num_layers, list(placements), num_gpus)
    sums.add(trace, units, placements, tables, rows)
    return sums.comparison(
        trace.layer_ids, main, basis, note, what, placements=placements, seed=seed
    )


def pooled_held_out(
    trace: Trace,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    plan_train: Callable[[Trace], list[Placement]],
    num_gpus: int,
    slots_per_gpu: int,
    main: str,
    note: str,
    seed: int = 0,
) -> Comparison:
    """Held-out costs pooled over folds (train positions, test positions): each fold's test
    tokens are scored by ``plan_train(train part)`` and by baselines planned on that part."""
    units, count, what = _units(trace)
    methods = [main, *(m for m in BASELINES if m != main)]
    sums = UnitSums(count, trace.num_layers, methods, num_gpus)
    for train_at, test_at in folds:
        train, test = trace.select_tokens(train_at), trace.select_tokens(test_at)
        placed = baseline_placements(train.tables(), num_gpus, slots_per_gpu, methods[1:], seed)
        placed[main] = plan_train(train)
        sums.add(test, units[test_at], placed)
    return sums.comparison(trace.layer_ids, main, "held-out", note, what, seed=seed)


def cross_validated(
    trace: Trace,
    planner: Planner,
    num_gpus: int,
    slots_per_gpu: int,
    main: str,
    folds: int,
    by: str,
    seed: int = 0,
) -> Comparison:
    """Held-out costs pooled over ``folds`` folds: each token is scored by the placements (the
    main method's from ``planner``, and the baselines) planned on the other folds."""

    if (
        by == "request"
        and trace.request_ids is not None
        and folds == len(requests_in_order(trace.request_ids))
    ):
        how = "each request scored by placements planned on the other requests"
    else:
        how = f"{folds} folds by {by}, each scored by placements planned on the others"
    return pooled_held_out(
        trace,
        fold_positions(trace, folds, by, seed),
        lambda train: planner(train.tables()),
        num_gpus,
        slots_per_gpu,
        main,
        f"{trace.num_tokens} tokens, {how}",
        seed,
    )
