"""Nodes of GPUs and what crossing them costs: `Topology` (presets of DeepEP's measured
links), layer times with communication for one token and for batches, and the check that
expert groups stay on nodes. The searches that use them are in `moefast.search.node`."""

from moefast.topology.groups import check, group_nodes
from moefast.topology.times import (
    PRESETS,
    Topology,
    Transfer,
    batch_time,
    expected_time,
    sample_batch_time,
    subset_times,
)

__all__ = [
    "PRESETS",
    "Topology",
    "Transfer",
    "batch_time",
    "check",
    "expected_time",
    "group_nodes",
    "sample_batch_time",
    "subset_times",
]
