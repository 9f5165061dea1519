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
from moefast.formats import load_placement
from moefast.model import ModelPlacement
from moefast.optimize import METHODS, NotProvenOptimalWarning, optimize
from moefast.plan import plan
from moefast import fill, milp
from moefast.readers import load_expert_load
from moefast.recorder import RoutingRecorder
from moefast.synthetic import synthetic_trace
from moefast.trace import Trace, load_trace

__all__ = [
    "METHODS",
    "ModelPlacement",
    "NotProvenOptimalWarning",
    "Placement",
    "RoutingRecorder",
    "SubsetTable",
    "Trace",
    "expected_cost",
    "load_expert_load",
    "load_placement",
    "load_trace",
    "lower_bound",
    "optimize",
    "plan",
    "subset_costs",
    "synthetic_trace",
]

__version__ = "0.1.0"
