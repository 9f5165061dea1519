"""GPUs in nodes, the links between them, and layer times with communication.

A `Topology` groups GPUs in nodes of `gpus_per_node` and gives each transfer of an
expert-parallel layer (dispatch, combine) a latency and a bandwidth per link class (same
GPU, NVLink inside a node, RDMA between nodes) and the bytes a token sends. The model and
the presets live in the core (`src/topology.rs`); the presets are fitted to DeepEP's
published figures on H800 with 400 Gb/s InfiniBand (deepseek-ai/DeepEP, docs/legacy.md):
low-latency kernel times within 5% at EP 8 to 256, normal-kernel bandwidths within 14%.

With a topology, the time of a token is round_us x (expert rounds of the busiest GPU) plus
dispatch and combine; the replica choice per token is exact (`subset_times`). A batch is
bounded (`batch_time`). `place` improves a placement for that time, or re-plans a served
placement with at most `max_moves` new replicas; `place_batch` improves one for the layer
time of batches of B tokens (compute plus communication) on a fixed sample of batches, and
`place_batch_walk` re-plans a served placement that way with at most `max_moves` copies.
`num_groups` keeps each expert group on one node, as DeepSeek-V3's group-limited routing
assumes (`group_nodes` checks it; `regroup`, `spread_groups` and `eplb_hierarchical` make
placements that keep it, the starts of the grouped searches; `check` says whether a
grouping fits at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import moefast._core as _core
from moefast._core import MAX_GPUS, Placement, SubsetTable
from moefast._util.checks import check_count, check_int, check_number, check_positive, check_seed
from moefast.batch.cost_model import CostModel
from moefast.moves import ROUND_US, CopyPrice

PRESETS = ("h800_normal", "h800_low_latency")


@dataclass(frozen=True)
class Transfer:
    """One direction of the exchange: bytes per token copy, and per link class (same GPU,
    NVLink, RDMA) a latency in microseconds and a bandwidth in GB/s (inf: free). Values
    are checked by the core where they are used (finite, non-negative latencies and bytes,
    positive bandwidths); here they must be real numbers, three per link list."""

    bytes_per_token: float
    latency_us: tuple[float, float, float]
    bandwidth_gb_s: tuple[float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "bytes_per_token", check_number("bytes_per_token", self.bytes_per_token)
        )
        for name in ("latency_us", "bandwidth_gb_s"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or np.ndim(values) != 1 or len(values) != 3:
                raise TypeError(f"{name} must be three numbers (same GPU, NVLink, RDMA)")
            checked = tuple(check_number(f"{name}[{i}]", v) for i, v in enumerate(values))
            object.__setattr__(self, name, checked)


def _transfer(t: tuple[float, Sequence[float], Sequence[float]]) -> Transfer:
    bytes_per_token, lat, bw = t
    return Transfer(bytes_per_token, (lat[0], lat[1], lat[2]), (bw[0], bw[1], bw[2]))


@dataclass(frozen=True)
class Topology:
    """GPUs in nodes of `gpus_per_node` (GPU g on node g // gpus_per_node), the dispatch and
    combine transfers, and whether a token is sent once per expert (`per_pair`, DeepEP's
    low-latency kernels) or once per node it reaches (its normal kernels)."""

    gpus_per_node: int
    dispatch: Transfer
    combine: Transfer
    per_pair: bool = False

    def __post_init__(self) -> None:
        # Checked here, so that -1 or 2**64 is a ValueError, not an OverflowError in the core.
        gpus = check_int("gpus_per_node", self.gpus_per_node, 1, MAX_GPUS)
        object.__setattr__(self, "gpus_per_node", gpus)
        for name in ("dispatch", "combine"):
            if not isinstance(getattr(self, name), Transfer):
                raise TypeError(
                    f"{name} must be a Transfer, got {type(getattr(self, name)).__name__}"
                )
        if not isinstance(self.per_pair, (bool, np.bool_)):
            raise TypeError(f"per_pair must be a bool, got {type(self.per_pair).__name__}")
        object.__setattr__(self, "per_pair", bool(self.per_pair))

    @classmethod
    def preset(cls, name: str = "h800_normal", *, gpus_per_node: int = 8) -> Topology:
        """DeepEP's H800 + 400 Gb/s InfiniBand figures: "h800_normal" (one copy per node
        reached) or "h800_low_latency" (one copy per expert)."""
        _, per_pair, d, c = _core.topology_preset(name)
        return cls(
            gpus_per_node=gpus_per_node,
            dispatch=_transfer(d),
            combine=_transfer(c),
            per_pair=per_pair,
        )

    @classmethod
    def free(cls, gpus_per_node: int = 1) -> Topology:
        """No communication cost: times under it are the compute-only costs."""
        free = Transfer(0.0, (0.0, 0.0, 0.0), (np.inf, np.inf, np.inf))
        return cls(gpus_per_node, free, free)

    def as_tuple(self) -> tuple:
        """The form the core takes."""

        def tr(t: Transfer) -> tuple:
            return (float(t.bytes_per_token), list(t.latency_us), list(t.bandwidth_gb_s))

        return (int(self.gpus_per_node), bool(self.per_pair), tr(self.dispatch), tr(self.combine))

    def copy_us(self, expert_bytes: float) -> tuple[float, float]:
        """The time (us) of copying one expert of `expert_bytes` bytes (in node, across
        nodes): over NVLink and over RDMA at the dispatch transfer's bandwidths. Those are
        DeepEP's measured all-to-all bandwidths (153-156 GB/s NVLink, 43-58 GB/s RDMA in
        its README), a conservative figure for one point-to-point copy; the kernel
        latency is left out (33 us beside ~850 us for a 44 MB expert over RDMA)."""
        expert_bytes = check_positive("expert_bytes", expert_bytes)
        bw = self.dispatch.bandwidth_gb_s
        return expert_bytes / (bw[1] * 1e3), expert_bytes / (bw[2] * 1e3)

    def copy_price(
        self, expert_bytes: float, tokens: float, *, round_us: float = ROUND_US
    ) -> CopyPrice:
        """The price of a copy by link (`moefast.moves.CopyPrice`, expert rounds per
        token): `copy_us` spread over the `tokens` this layer serves until the next
        re-plan, in rounds of `round_us`, as `moefast.moves.price_per_copy` prices one
        link."""
        tokens = check_positive("tokens", tokens)
        round_us = check_positive("round_us", round_us)
        in_node, across = self.copy_us(expert_bytes)
        return CopyPrice(in_node / round_us / tokens, across / round_us / tokens)

    def comm_us(self, tokens: int, k: int, node_sum: int, num_gpus: int) -> float:
        """Dispatch + combine time (us) of `tokens` tokens of `k` experts reaching
        `node_sum` nodes in all (summed over tokens) on `num_gpus` GPUs."""
        return _core.topology_comm_us(
            self.as_tuple(),
            check_count("tokens", tokens, 0),
            check_count("k", k, 0),
            check_count("node_sum", node_sum, 0),
            check_int("num_gpus", num_gpus, 1, MAX_GPUS),
        )


def subset_times(
    table: SubsetTable, placement: Placement, topology: Topology, *, round_us: float = ROUND_US
) -> np.ndarray:
    """Time (us) of one token of each row of `table`: round_us per expert round of the
    busiest GPU plus dispatch and combine, minimized exactly over the replica choice."""
    return _core.topology_subset_times(table, placement, topology.as_tuple(), float(round_us))


def expected_time(
    table: SubsetTable, placement: Placement, topology: Topology, *, round_us: float = ROUND_US
) -> float:
    """Mean time (us per token) of `table` under the placement and topology."""
    times = subset_times(table, placement, topology, round_us=round_us)
    return float(np.dot(times, table.weights) / table.total_weight)


def batch_time(
    topk: np.ndarray, placement: Placement, topology: Topology, cost_model: CostModel
) -> tuple[float, float]:
    """(achievable time, lower bound) in us of one layer for a batch [tokens, k]: the
    busiest GPU's compute under `cost_model` plus dispatch and combine."""
    return _core.topology_batch_time(
        topk, placement, cost_model.alpha, cost_model.beta, cost_model.p, topology.as_tuple()
    )


def default_num_batches(batch_size: int) -> int:
    """The sample `place_batch` searches on (and `sample_batch_time` scores) by default:
    about 8,192 tokens in all, 16 to 128 batches."""
    return min(128, max(16, 8192 // batch_size))


def walk_batches(batch_size: int) -> int:
    """The sample `place_batch_walk` re-plans on by default: four times `place_batch`'s
    (about 32,768 tokens). A walk of few steps, each the best gain per copy of a few
    candidates, fits the noise of a smaller sample: on the V3-size layer of
    benches/bench_replan_topology.py at B = 64, with 8,192 tokens the walk's gain on the
    search's own sample was 2.3x its gain on the validation sample (1.1x with 32,768)."""
    return 4 * default_num_batches(check_count("batch_size", batch_size))


def batch_search_options(
    *,
    slots_per_gpu: int,
    topology: Topology,
    cost_model: CostModel,
    batch_size: int,
    num_batches: int,
    seed: int,
    max_evaluations: int,
    num_groups: int | None = None,
) -> _core.BatchSearchOptions:
    """The core's options of the batch searches with communication (`place_batch`, its
    walk, `sample_batch_time`), with the counts and the seed checked."""
    return _core.BatchSearchOptions(
        slots_per_gpu=slots_per_gpu,
        alpha=cost_model.alpha,
        beta=cost_model.beta,
        p=cost_model.p,
        topology=topology.as_tuple(),
        batch_size=batch_size,
        num_batches=check_count("num_batches", num_batches),
        seed=check_seed("seed", seed),
        max_evaluations=check_count("max_evaluations", max_evaluations, low=0),
        num_groups=None if num_groups is None else check_count("num_groups", num_groups),
    )


def sample_batch_time(
    table: SubsetTable,
    placement: Placement,
    *,
    topology: Topology,
    cost_model: CostModel,
    batch_size: int,
    num_batches: int | None = None,
    seed: int = 0,
    validation: bool = False,
) -> float:
    """Mean achievable layer time (us) of `placement` on the sample `place_batch` draws
    with the same `batch_size`, `num_batches` and `seed` (`validation`: on its validation
    sample)."""
    batch_size = check_count("batch_size", batch_size)
    if num_batches is None:
        num_batches = default_num_batches(batch_size)
    options = batch_search_options(
        slots_per_gpu=1,
        topology=topology,
        cost_model=cost_model,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        max_evaluations=0,
    )
    _, mean = _core.improve_batch_placement(
        table, [placement], options, score_only=True, validation=bool(validation)
    )
    return float(mean)
