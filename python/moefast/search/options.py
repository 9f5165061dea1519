"""The options of a search, each a frozen value checked when it is made: what it minimizes
(`Objective`) and how much of it to run (`Budget`). `moefast.optimize` and `moefast.plan`
take them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from moefast._util.checks import check_count, check_non_negative, check_positive
from moefast.batch.cost_model import CostModel, check_cost_model

#: What `optimize` minimizes: the expected decode cost, or the mean step time of batches.
OBJECTIVES = ("decode", "batch")


@dataclass(frozen=True)
class Objective:
    """What a placement minimizes.

    ``kind="decode"``: the expected cost of one token (expert rounds). ``kind="batch"``: the
    mean step time of batches of ``batch_size`` tokens under ``cost_model`` (us), by the
    batch search (`moefast.search.batch.optimize_batch`, on ``num_batches`` sampled batches,
    at most ``max_evaluations`` moves timed). With ``kind="decode"``, ``cost_model`` is the
    model a serving profile's steps are timed with (`moefast.plan(profile=)`); `optimize`
    has no use for it there and refuses it.
    """

    kind: Literal["decode", "batch"] = "decode"
    batch_size: int | None = None
    cost_model: CostModel | None = None
    num_batches: int | None = None
    max_evaluations: int = 40_000

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        if self.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.kind!r}: choose 'decode' or 'batch'")
        if self.kind == "decode":
            if self.batch_size is not None or self.num_batches is not None:
                given = [
                    name
                    for name in ("batch_size", "cost_model", "num_batches")
                    if getattr(self, name) is not None
                ]
                raise ValueError(f"{', '.join(given)} need objective='batch'")
        elif self.batch_size is None or self.cost_model is None:
            raise ValueError("objective='batch' needs batch_size and cost_model")
        if self.batch_size is not None:
            set_field(self, "batch_size", check_count("batch_size", self.batch_size))
        if self.cost_model is not None:
            check_cost_model(self.cost_model)
        if self.num_batches is not None:
            set_field(self, "num_batches", check_count("num_batches", self.num_batches))
        set_field(
            self, "max_evaluations", check_count("max_evaluations", self.max_evaluations, low=0)
        )


@dataclass(frozen=True)
class Budget:
    """How much search: ``time_limit`` (seconds) bounds the MILP; ``time_budget`` (seconds)
    and ``work_budget`` (rows read by the greedy's exact evaluations) make the greedy
    anytime (`moefast.optimize`). A plan spends them over all its layers. A work budget
    keeps the result deterministic for a seed, a time budget does not."""

    time_limit: float | None = None
    time_budget: float | None = None
    work_budget: int | None = None

    def __post_init__(self) -> None:
        if self.time_limit is not None:
            # HiGHS ignores an invalid limit and would run without one.
            check_positive("time_limit", self.time_limit)
        time_budget, work_budget = check_budgets(self.time_budget, self.work_budget)
        object.__setattr__(self, "time_budget", time_budget)
        object.__setattr__(self, "work_budget", work_budget)


def check_budgets(
    time_budget: float | None, work_budget: int | None
) -> tuple[float | None, int | None]:
    """The greedy's search budgets: seconds (finite, >= 0) and rows read (an int >= 0)."""
    if time_budget is not None:
        time_budget = check_non_negative("time_budget", time_budget)
    if work_budget is not None:
        work_budget = check_count("work_budget", work_budget, low=0)
    return time_budget, work_budget
