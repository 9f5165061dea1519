"""The exact optimal placement by mixed-integer programming (HiGHS, via highspy).

The Euro-Par 2025 LP generalized from pairs to k-subsets:
  x[e, g] in {0, 1}       a replica of expert e on GPU g
  a[s, e, g] in [0, 1]    subset s sends expert e to GPU g (a <= x)
  c[s] integer            the rounds of subset s: sum over e in s of a[s, e, g] <= c[s] for every g
  minimize sum_s w[s] c[s]
with at most `slots_per_gpu` experts per GPU and at least one replica per expert. For integer x
and c the assignment polytope is a bipartite flow polytope with integer capacities, so `a` need
not be integer. GPUs are interchangeable, so their columns of x are ordered lexicographically.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

import moefast._core as _core
from moefast._core import Placement, SubsetTable, expected_cost, fill_free_slots, subset_costs

#: Above this many assignment variables the MILP is refused unless a time limit is given.
MAX_ASSIGNMENT_VARIABLES = 150_000


class NotProvenOptimalWarning(UserWarning):
    """The MILP stopped at its time limit before proving its placement optimal."""


@dataclass(frozen=True)
class MilpResult:
    placement: Placement
    #: Expected cost of the placement (expert rounds per token).
    cost: float
    #: The solver's proven lower bound on the optimal expected cost.
    bound: float
    #: True if the solver proved the placement optimal.
    optimal: bool
    seconds: float


class _Rows:
    """Constraint rows collected as triplets, handed to HiGHS row-wise."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.index: list[np.ndarray] = []
        self.value: list[np.ndarray] = []
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.nnz = 0

    def add(self, cols, coefs, lower: float, upper: float) -> None:
        cols = np.asarray(cols, dtype=np.int32)
        self.starts.append(self.nnz)
        self.index.append(cols)
        self.value.append(np.broadcast_to(np.asarray(coefs, dtype=np.float64), cols.shape))
        self.lower.append(lower)
        self.upper.append(upper)
        self.nnz += len(cols)


def solve_milp(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    time_limit: float | None = None,
    start: Placement | None = None,
) -> MilpResult:
    """The exact optimal placement of `table` (or the best found within `time_limit` seconds).
    `start`, a placement to begin from (say the greedy's), gives HiGHS a first incumbent."""
    import highspy

    if not table.total_weight > 0:
        raise ValueError("the table is empty (total weight 0): nothing to optimize")
    subsets, weights = table.subsets, table.weights
    num_experts, k, n = table.num_experts, table.k, len(table)
    assignment_vars = n * k * num_gpus
    if assignment_vars > MAX_ASSIGNMENT_VARIABLES and time_limit is None:
        raise ValueError(
            f"the exact MILP would have {assignment_vars:,} assignment variables"
            f" ({n:,} subsets x k={k} x {num_gpus} GPUs),"
            f" more than {MAX_ASSIGNMENT_VARIABLES:,}: prune the table, use method='greedy',"
            " or pass time_limit to accept a result that may not be optimal"
        )
    began = time.perf_counter()
    num_x = num_experts * num_gpus
    x = np.arange(num_x).reshape(num_experts, num_gpus)
    a = num_x + np.arange(assignment_vars).reshape(n, k, num_gpus)
    c = num_x + assignment_vars + np.arange(n)
    num_cols = num_x + assignment_vars + n

    rows = _Rows()
    for g in range(num_gpus):
        rows.add(x[:, g], 1.0, 0.0, slots_per_gpu)
    for e in range(num_experts):
        rows.add(x[e], 1.0, 1.0, num_gpus)
    for s in range(n):
        for j, e in enumerate(subsets[s]):
            rows.add(a[s, j], 1.0, 1.0, 1.0)
            for g in range(num_gpus):
                rows.add([a[s, j, g], x[e, g]], [1.0, -1.0], -np.inf, 0.0)
        for g in range(num_gpus):
            rows.add(np.append(a[s, :, g], c[s]), np.append(np.ones(k), -1.0), -np.inf, 0.0)
    if num_experts <= 30:
        # Columns of x in non-increasing lexicographic order (GPUs are interchangeable).
        place_value = 2.0 ** np.arange(num_experts - 1, -1, -1)
        for g in range(num_gpus - 1):
            rows.add(
                np.concatenate([x[:, g], x[:, g + 1]]),
                np.concatenate([place_value, -place_value]),
                0.0,
                np.inf,
            )
    else:
        rows.add([x[0, 0]], 1.0, 1.0, 1.0)

    lp = highspy.HighsLp()
    lp.num_col_ = num_cols
    lp.num_row_ = len(rows.lower)
    cost = np.zeros(num_cols)
    cost[c] = weights / table.total_weight
    lp.col_cost_ = cost
    lower = np.zeros(num_cols)
    lower[c] = 1.0
    upper = np.ones(num_cols)
    upper[c] = k
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    integrality = np.full(num_cols, highspy.HighsVarType.kContinuous)
    integrality[:num_x] = highspy.HighsVarType.kInteger
    integrality[c] = highspy.HighsVarType.kInteger
    lp.integrality_ = list(integrality)
    lp.row_lower_ = np.asarray(rows.lower)
    lp.row_upper_ = np.asarray(rows.upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.append(rows.starts, rows.nnz).astype(np.int32)
    lp.a_matrix_.index_ = np.concatenate(rows.index)
    lp.a_matrix_.value_ = np.concatenate(rows.value)

    # highspy's Highs wrapper prints the HiGHS banner when it is built, before any option
    # can turn output off; the core class it wraps does not.
    solver = getattr(highspy, "_Highs", highspy.Highs)()
    solver.setOptionValue("output_flag", False)
    solver.setOptionValue("random_seed", 0)
    solver.setOptionValue("threads", 1)
    if time_limit is not None:
        solver.setOptionValue("time_limit", float(time_limit))
    solver.passModel(lp)
    if start is not None:
        # HiGHS completes the continuous assignment variables of a start given by x and c.
        values = np.zeros(num_cols)
        values[:num_x] = start.replicas.ravel()
        values[c] = subset_costs(table, start)
        solution = highspy.HighsSolution()
        solution.col_value = list(values)
        solution.value_valid = True
        solver.setSolution(solution)
    solver.run()
    status = solver.getModelStatus()
    values = np.asarray(solver.getSolution().col_value)
    if len(values) != num_cols or status not in (
        highspy.HighsModelStatus.kOptimal,
        highspy.HighsModelStatus.kTimeLimit,
        highspy.HighsModelStatus.kInterrupt,
    ):
        raise RuntimeError(f"HiGHS found no placement: {solver.modelStatusToString(status)}")
    info = solver.getInfo()
    if info.primal_solution_status != highspy.SolutionStatus.kSolutionStatusFeasible:
        # Stopped (time limit, Ctrl-C) before HiGHS held any placement: its column values
        # are then not a placement, so the start (if any) is the best one known.
        if start is None:
            raise RuntimeError(
                f"HiGHS found no placement within the time limit of {time_limit} s"
                " (it stopped before its first feasible solution); raise time_limit"
                " or pass start= (say the greedy's placement)"
            )
        replicas = start.replicas
    else:
        replicas = values[:num_x].reshape(num_experts, num_gpus) > 0.5
    placement = fill_free_slots(Placement(replicas), slots_per_gpu, table.expert_load())
    optimal = status == highspy.HighsModelStatus.kOptimal
    achieved = expected_cost(table, placement)
    bound = achieved if optimal else min(achieved, float(info.mip_dual_bound))
    return MilpResult(placement, achieved, bound, optimal, time.perf_counter() - began)


def milp_placement(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    time_limit: float | None = None,
    seed: int = 0,
) -> Placement:
    """`solve_milp`'s placement; warns with NotProvenOptimalWarning when the time limit
    stopped the solver before it proved the placement optimal. Under a time limit HiGHS
    starts from the greedy's placement, so the result is never worse than the greedy's,
    even when the limit ends the search before HiGHS finds a placement of its own."""
    start = None
    if time_limit is not None:
        start = _core.optimize_placement(table, num_gpus, slots_per_gpu, "greedy", seed, None, None)
    result = solve_milp(table, num_gpus, slots_per_gpu, time_limit=time_limit, start=start)
    if not result.optimal:
        warnings.warn(
            f"the MILP stopped at its {time_limit} s time limit: cost {result.cost:.4f},"
            f" proven lower bound {result.bound:.4f}; the placement is not proven optimal",
            NotProvenOptimalWarning,
            stacklevel=3,  # the caller of moefast.optimize
        )
    return result.placement
