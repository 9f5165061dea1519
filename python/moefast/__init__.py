"""moefast: co-activation-aware expert placement for Mixture-of-Experts inference.

Reads routing traces, builds the table of co-activated expert subsets, evaluates and
optimizes placements of expert replicas on GPUs, and writes them for inference engines.

The names below are the documented API; the subpackages (`moefast.io`, `moefast.search`,
`moefast.evaluate`, `moefast.planning`, `moefast.report.report`, `moefast.batch.times`,
`moefast.topology.times`, `moefast.dispatch`: a co-activation-aware dispatch engines can
run) and `moefast.eplb` (DeepSeek's EPLB as a drop-in) are imported by name.
"""

from moefast._core import (
    Placement,
    SubsetTable,
    __version__,
    expected_cost,
    lower_bound,
    subset_costs,
)
from moefast.batch.cost_model import CostModel
from moefast.batch.times import batch_time, simulate
from moefast.evaluate.heldout import Evaluation
from moefast.io.engines import load_placement
from moefast.io.provenance import load_trace
from moefast.io.readers import load_expert_load
from moefast.io.recorder import RoutingRecorder
from moefast.io.streaming import SubsetTableBuilder, convert, iter_trace
from moefast.io.synthetic import synthetic_trace
from moefast.moves import MoveBudget
from moefast.placement import ModelPlacement
from moefast.planning.plan import plan
from moefast.planning.profile import ServingProfile
from moefast.search.methods import METHODS, optimize
from moefast.search.milp import NotProvenOptimalWarning
from moefast.search.options import Budget, Objective
from moefast.topology.cluster import Cluster
from moefast.topology.times import Topology
from moefast.trace import Trace

__all__ = [
    "METHODS",
    "Budget",
    "Cluster",
    "CostModel",
    "Evaluation",
    "ModelPlacement",
    "MoveBudget",
    "NotProvenOptimalWarning",
    "Objective",
    "Placement",
    "RoutingRecorder",
    "ServingProfile",
    "SubsetTable",
    "SubsetTableBuilder",
    "Topology",
    "Trace",
    "__version__",
    "batch_time",
    "convert",
    "expected_cost",
    "iter_trace",
    "load_expert_load",
    "load_placement",
    "load_trace",
    "lower_bound",
    "optimize",
    "plan",
    "simulate",
    "subset_costs",
    "synthetic_trace",
]


def __dir__() -> list[str]:
    # The documented names only: importing them binds the subpackages as attributes too.
    return sorted(__all__)
