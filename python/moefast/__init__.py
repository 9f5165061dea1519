"""moefast: co-activation-aware expert placement for Mixture-of-Experts inference.

Reads routing traces, builds the table of co-activated expert subsets, evaluates and
optimizes placements of expert replicas on GPUs, and writes them for inference engines.
"""

from moefast import data, eplb, milp, models  # submodules, as mf.data, mf.eplb, ...
from moefast._core import (
    Placement,
    SubsetTable,
    __version__,
    expected_cost,
    lower_bound,
    subset_costs,
)
from moefast.batch import batch_time, simulate
from moefast.cost_model import CostModel
from moefast.formats import load_placement
from moefast.milp import NotProvenOptimalWarning
from moefast.model import ModelPlacement
from moefast.optimizers import METHODS, optimize
from moefast.planner import plan
from moefast.readers import load_expert_load
from moefast.recorder import RoutingRecorder
from moefast.streaming import SubsetTableBuilder, convert, iter_trace
from moefast.synthetic import synthetic_trace
from moefast.trace import Trace, load_trace

__all__ = [
    "METHODS",
    "CostModel",
    "ModelPlacement",
    "NotProvenOptimalWarning",
    "Placement",
    "RoutingRecorder",
    "SubsetTable",
    "SubsetTableBuilder",
    "Trace",
    "__version__",
    "batch_time",
    "convert",
    "data",
    "eplb",
    "expected_cost",
    "iter_trace",
    "load_expert_load",
    "load_placement",
    "load_trace",
    "lower_bound",
    "milp",
    "models",
    "optimize",
    "plan",
    "simulate",
    "subset_costs",
    "synthetic_trace",
]
