"""Expert groups on nodes: whether a placement keeps each group on one node."""

from __future__ import annotations

import moefast._core as _core
from moefast._core import Placement
from moefast._util.checks import check_count
from moefast.topology.times import Topology


def group_nodes(placement: Placement, num_groups: int, gpus_per_node: int) -> list[int]:
    """The node of each of `num_groups` groups of consecutive expert ids when every
    replica of a group is on one node (DeepSeek-V3's assumption for group-limited routing:
    a token's top groups then reach at most that many nodes); ValueError naming the first
    replica off its group's node otherwise."""
    return _core.topology_group_nodes(placement, num_groups, gpus_per_node)


def check(
    topology: Topology,
    num_experts: int,
    num_gpus: int,
    slots_per_gpu: int,
    num_groups: int | None = None,
) -> None:
    """ValueError unless `topology` fits `num_gpus` GPUs (whole nodes) and, with
    `num_groups`, the groups can each live on one node: `num_groups` divides the experts,
    the groups spread evenly over the nodes fit in a node's slots, and a node has at least
    as many experts as a GPU's slots (its GPUs hold distinct experts)."""
    if not isinstance(topology, Topology):
        raise TypeError(
            f"topology must be a moefast.topology.times.Topology, got {type(topology).__name__}"
        )
    _core.topology_check(
        topology.as_tuple(),
        check_count("num_experts", num_experts),
        check_count("num_gpus", num_gpus),
        check_count("slots_per_gpu", slots_per_gpu),
        None if num_groups is None else check_count("num_groups", num_groups),
    )
