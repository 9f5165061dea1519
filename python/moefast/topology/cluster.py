"""`Cluster`: where the experts go, the GPUs and their slots, and with a topology the nodes
they sit in; the first option of `moefast.optimize` and `moefast.plan`."""

from __future__ import annotations

from dataclasses import dataclass

from moefast._core import MAX_GPUS
from moefast._util.checks import check_count, check_int, check_non_negative
from moefast.moves import ROUND_US
from moefast.topology.times import Topology


@dataclass(frozen=True)
class Cluster:
    """``num_gpus`` GPUs (expert-parallel ranks) of ``slots_per_gpu`` expert slots each.

    With a ``topology`` (GPUs in nodes, dispatch and combine between them,
    `moefast.topology.times.Topology`) plans are node-aware; ``num_groups`` then keeps each
    of that many groups of consecutive expert ids on one node (DeepSeek-V3's group-limited
    routing). ``round_us`` is the time of one expert round in us: what a round costs in
    decode times with communication, and what turns a copy's price in rounds into step
    time when a batch plan is re-planned (`moefast.moves`).
    """

    num_gpus: int
    slots_per_gpu: int
    topology: Topology | None = None
    num_groups: int | None = None
    round_us: float = ROUND_US

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "num_gpus", check_int("num_gpus", self.num_gpus, 1, MAX_GPUS))
        set_field(self, "slots_per_gpu", check_int("slots_per_gpu", self.slots_per_gpu, 1))
        if self.topology is not None and not isinstance(self.topology, Topology):
            raise TypeError(
                "topology must be a moefast.topology.times.Topology or None, got"
                f" {type(self.topology).__name__}"
            )
        if self.num_groups is not None:
            if self.topology is None:
                raise ValueError("num_groups needs topology= (groups are kept on nodes)")
            set_field(self, "num_groups", check_count("num_groups", self.num_groups))
        set_field(self, "round_us", check_non_negative("round_us", self.round_us))

    @property
    def compute_only(self) -> Cluster:
        """The same GPUs and slots without a topology."""
        return Cluster(self.num_gpus, self.slots_per_gpu)


def as_cluster(cluster: Cluster | int, slots_per_gpu: int | None) -> Cluster:
    """``cluster``, or the shorthand ``(num_gpus, slots_per_gpu)`` as a `Cluster`."""
    if isinstance(cluster, Cluster):
        if slots_per_gpu is not None:
            raise TypeError(
                "slots_per_gpu is given twice: in the Cluster and beside it; leave it out"
            )
        return cluster
    if slots_per_gpu is None:
        raise TypeError(
            "slots_per_gpu is missing: give a moefast.Cluster, or num_gpus and slots_per_gpu"
        )
    return Cluster(cluster, slots_per_gpu)
