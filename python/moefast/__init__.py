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
from moefast.batch import batch_time, simulate
from moefast.cost_model import CostModel

__all__ = [
    "CostModel",
    "Placement",
    "SubsetTable",
    "batch_time",
    "expected_cost",
    "lower_bound",
    "simulate",
    "subset_costs",
]

__version__ = "0.1.0"
