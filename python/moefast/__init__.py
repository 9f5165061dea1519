"""moefast: co-activation-aware expert placement for Mixture-of-Experts inference.

Reads routing traces, builds the table of co-activated expert subsets, evaluates and
optimizes placements of expert replicas on GPUs, and writes them for inference engines.
"""

from moefast._core import (
    Placement,
    SubsetTable,
    expected_cost,
    lower_bound,
    subset_costs,
)

from moefast.model import ModelPlacement
from moefast.optimize import METHODS, NotProvenOptimalWarning, optimize
from moefast.plan import plan
from moefast import fill, milp

__all__ = [
    "METHODS",
    "ModelPlacement",
    "NotProvenOptimalWarning",
    "optimize",
    "plan",
    "Placement",
    "SubsetTable",
    "expected_cost",
    "lower_bound",
    "subset_costs",
]

__version__ = "0.1.0"
