"""How far a placement may be from the optimum: lower bounds on the expected decode cost
that no placement with the given slots beats, and the gap of a placement to the best of
them (docs/algorithms.md#lower-bounds).

- ``ceil_k_g``: ceil(k / G), what every row costs at least (`moefast.lower_bound` without
  slots);
- ``collision``: the core's collision bound (`moefast.lower_bound` with
  ``slots_per_gpu``): experts with one replica that share a GPU cost their rows a round,
  weighed by the table's pair weights;
- ``milp``: the dual bound HiGHS proves for the exact MILP (`moefast.search.milp`) on the
  table's heaviest rows within a time limit, made a bound on the whole table: the rows left
  out cost at least ceil(k / G) each.

Every bound is on the expected cost of the table it is given (the mean over its rows, as
`moefast.expected_cost` of that table): on a held-out table it certifies the held-out cost,
on a train table the in-sample one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moefast._core import Placement, SubsetTable, expected_cost, lower_bound, optimize_placement
from moefast.search.milp import solve_milp


@dataclass(frozen=True)
class Certificate:
    """A placement's expected cost beside the lower bounds of its table."""

    #: Expected cost of the placement on the table (expert rounds per token).
    cost: float
    #: Each bound by name (``ceil_k_g``, ``collision``, ``milp`` where it ran).
    bounds: dict[str, float] = field(default_factory=dict)

    @property
    def bound(self) -> float:
        """The best (largest) bound."""
        return max(self.bounds.values())

    @property
    def gap(self) -> float:
        """How much the cost may exceed the optimum, relative to the best bound
        (0.05 = the placement is at most 5% above the optimum)."""
        return self.cost / self.bound - 1.0


def milp_bound(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    time_limit: float = 10.0,
    max_subsets: int = 200,
    start: Placement | None = None,
) -> tuple[float, bool]:
    """A lower bound on the expected cost of ``table`` from the MILP on its
    ``max_subsets`` heaviest rows, and whether that MILP was solved to optimality (then the
    bound is exact on those rows). With kept weight w of the table's total W and the
    MILP's bound b on the kept rows' mean cost, the rows left out cost ceil(k / G) at
    least: the bound is (w b + (W - w) ceil(k / G)) / W."""
    if max_subsets < 1:
        raise ValueError(f"max_subsets must be at least 1, got {max_subsets}")
    kept = table.prune(max_subsets=max_subsets)
    if start is None:
        # The greedy's placement: HiGHS then always holds an incumbent.
        start = optimize_placement(kept, num_gpus, slots_per_gpu, "greedy", 0, None, None)
    result = solve_milp(kept, num_gpus, slots_per_gpu, time_limit=time_limit, start=start)
    base = math.ceil(table.k / num_gpus)
    total, part = table.total_weight, kept.total_weight
    return (part * result.bound + (total - part) * base) / total, result.optimal


def certify(
    table: SubsetTable,
    placement: Placement,
    slots_per_gpu: int,
    milp_time_limit: float | None = None,
    milp_subsets: int = 200,
) -> Certificate:
    """``placement``'s expected cost on ``table`` and the lower bounds of every placement
    on its GPUs with ``slots_per_gpu`` slots each: ceil(k / G) and the collision bound,
    and the MILP's bound on the heaviest ``milp_subsets`` rows when ``milp_time_limit``
    (seconds) is given."""
    num_gpus = placement.num_gpus
    bounds = {
        "ceil_k_g": lower_bound(table, num_gpus),
        "collision": lower_bound(table, num_gpus, slots_per_gpu),
    }
    if milp_time_limit is not None:
        bounds["milp"], _ = milp_bound(
            table, num_gpus, slots_per_gpu, time_limit=milp_time_limit, max_subsets=milp_subsets
        )
    return Certificate(expected_cost(table, placement), bounds)
