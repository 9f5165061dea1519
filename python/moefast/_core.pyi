"""Type stubs of moefast's compiled core (`moefast._core`), checked against the runtime by
`python -m mypy.stubtest moefast._core --allowlist tests/stubtest_allowlist.txt` (.ci/run)."""

from collections.abc import Sequence
from typing import Final, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_BATCH",
    "MAX_EXPERTS",
    "MAX_GPUS",
    "MAX_K",
    "METHODS",
    "BatchSearchOptions",
    "Placement",
    "SubsetTable",
    "__version__",
    "batch_split",
    "batch_time",
    "check_memory",
    "dispatch_costs",
    "expected_cost",
    "fill_free_slots",
    "improve_batch_placement",
    "improve_placement",
    "interrupt",
    "lower_bound",
    "optimize_batch",
    "optimize_placement",
    "rebalance_experts",
    "relabel_gpus",
    "replan_batch_placement",
    "replan_placement",
    "replica_copies",
    "simulate_dispatch_steps",
    "simulate_steps",
    "subset_costs",
    "topology_batch_time",
    "topology_check",
    "topology_comm_us",
    "topology_eplb_hierarchical",
    "topology_group_nodes",
    "topology_preset",
    "topology_regroup",
    "topology_spread_groups",
    "topology_subset_times",
]
__version__: Final[str]

#: Largest number of experts of a layer (ids are stored as 16-bit integers).
MAX_EXPERTS: Final[int]
#: Largest k (experts per token) a subset table holds.
MAX_K: Final[int]
#: Largest number of GPUs a placement spans.
MAX_GPUS: Final[int]
#: Most tokens in one simulated step.
MAX_BATCH: Final[int]
#: The methods `optimize_placement` implements ("milp" is Python's, in moefast.search.milp).
METHODS: Final[tuple[str, ...]]

@final
class SubsetTable:
    """The frequency table of co-activated expert subsets of one layer."""

    @staticmethod
    def from_topk(
        topk: npt.ArrayLike, num_experts: int, weights: npt.ArrayLike | None = None
    ) -> SubsetTable:
        """Counts the subsets of an int array [tokens, k] (any integer dtype, rows in any order)."""
    @staticmethod
    def from_topk_with_rows(
        topk: npt.ArrayLike, num_experts: int, weights: npt.ArrayLike | None = None
    ) -> tuple[SubsetTable, npt.NDArray[np.int64]]:
        """`from_topk`, and for each token the row of the table holding its subset (int64
        [tokens]): a token's cost is its row's, e.g. `subset_costs(table, placement)[rows]`."""
    @staticmethod
    def from_subsets(
        subsets: npt.ArrayLike, weights: npt.ArrayLike, num_experts: int
    ) -> SubsetTable:
        """A table from subsets [n, k] and weights [n]; repeated rows add their weights."""
    @staticmethod
    def merge(tables: Sequence[SubsetTable]) -> SubsetTable:
        """The rows of all `tables` (same num_experts, k), equal rows adding their weights:
        what `from_topk` gives over the concatenated tokens, in the same order."""
    @property
    def subsets(self) -> npt.NDArray[np.int64]:
        """int64 [n, k]: ids ascending in a row, rows by weight descending, ties by ids."""
    @property
    def weights(self) -> npt.NDArray[np.float64]:
        """float64 [n]: token count (or summed token weights) of each subset."""
    @property
    def num_experts(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def total_weight(self) -> float: ...
    @property
    def coverage(self) -> float:
        """Share of the unpruned table's weight this table keeps (1.0 unless pruned)."""
    def __len__(self) -> int: ...
    def prune(self, coverage: float | None = None, max_subsets: int | None = None) -> SubsetTable:
        """The shortest prefix reaching `coverage` of the weight and/or of `max_subsets` rows."""
    def expert_load(self) -> npt.NDArray[np.float64]:
        """float64 [E]: weight of the rows holding each expert."""
    def expert_index(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """CSR `(offsets [E+1], rows)`: rows of expert e are rows[offsets[e]:offsets[e+1]]."""

@final
class Placement:
    """Which GPUs hold a replica of each expert."""

    def __new__(cls, replicas: npt.ArrayLike) -> Placement:
        """From a bool array [num_experts, num_gpus]: True where GPU g holds expert e."""
    @staticmethod
    def from_lists(lists: Sequence[Sequence[int]], num_gpus: int) -> Placement: ...
    @property
    def replicas(self) -> npt.NDArray[np.bool_]:
        """bool [num_experts, num_gpus]."""
    @property
    def num_experts(self) -> int: ...
    @property
    def num_gpus(self) -> int: ...
    @property
    def slots_used(self) -> npt.NDArray[np.int64]:
        """int64 [num_gpus]: experts held by each GPU."""
    def to_lists(self) -> list[list[int]]: ...

def subset_costs(table: SubsetTable, placement: Placement) -> npt.NDArray[np.int64]:
    """Exact cost of each subset: expert rounds run by the busiest GPU, int64 [n]."""

def expected_cost(table: SubsetTable, placement: Placement) -> float:
    """Weighted mean subset cost (expert rounds per token)."""

def lower_bound(table: SubsetTable, num_gpus: int, slots_per_gpu: int | None = None) -> float:
    """No placement on num_gpus GPUs costs less: ceil(k / num_gpus); with slots_per_gpu,
    the collision bound, which reads the table's pair weights (docs/algorithms.md)."""

def optimize_placement(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    method: str = "greedy",
    seed: int | None = None,
    time_budget: float | None = None,
    work_budget: int | None = None,
) -> Placement:
    """Greedy or a baseline ("contiguous", "round_robin", "eplb") placement filling every slot;
    `seed` None is seed 0. The greedy's searches stop at `time_budget` seconds or after
    `work_budget` rows read (deterministic); a complete placement is always built."""

def check_memory(num_experts: int, num_gpus: int, slots_per_gpu: int) -> None:
    """Raises ValueError unless `num_gpus` GPUs of `slots_per_gpu` slots hold `num_experts`
    experts (each at least once, never twice on one GPU)."""

def fill_free_slots(
    placement: Placement, slots_per_gpu: int, expert_load: npt.ArrayLike
) -> Placement:
    """`placement` with every free slot filled by the expert of highest load per replica that
    the GPU lacks (the baselines' filling)."""

def rebalance_experts(
    weight: npt.ArrayLike, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """DeepSeek EPLB on float32 loads [L, E]: phy2log [L, P], phyrank [L, P], logcnt [L, E]."""

def batch_time(
    topk: npt.ArrayLike, placement: Placement, alpha: float, beta: float, p: float, with_bound: bool
) -> tuple[float, float | None]:
    """Step time (cost model units) of one layer for a batch [B, k], optionally a lower bound."""

def batch_split(
    counts: npt.ArrayLike, placement: Placement, alpha: float, beta: float, p: float
) -> tuple[float, npt.NDArray[np.uint32]]:
    """(step time, tokens int [E, G] each expert serves on each GPU) behind batch_time."""

def dispatch_costs(
    table: SubsetTable,
    placement: Placement,
    dispatch_map: npt.ArrayLike | None,
    seed: int,
) -> npt.NDArray[np.float64]:
    """Expected cost (expert rounds) of each subset, float64 [n], when a static map [ranks, E]
    (averaged over the ranks) or, with None, a uniform draw per expert picks the replicas."""

def simulate_dispatch_steps(
    topk: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    placements: Sequence[Placement],
    dispatch_maps: Sequence[npt.ArrayLike | None],
    batch_sizes: Sequence[int],
    alpha: float,
    beta: float,
    p: float,
    seed: int,
    steps: int,
    round_robin: bool = False,
) -> npt.NDArray[np.float64]:
    """Step times [batch sizes, steps] under one dispatch rule per layer (map or None)."""

def simulate_steps(
    topk: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    placements: Sequence[Placement],
    batch_sizes: Sequence[int],
    alpha: float,
    beta: float,
    p: float,
    seed: int,
    steps: int,
) -> npt.NDArray[np.float64]:
    """Step times [batch sizes, steps] of drawn batches, summed over the layers' placements."""

def optimize_batch(
    topk: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    start: Placement,
    slots_per_gpu: int,
    alpha: float,
    beta: float,
    p: float,
    batch_size: int,
    seed: int,
    num_batches: int | None,
    max_evaluations: int,
    max_copies: int | None = None,
    copy_price: float = 0.0,
) -> Placement:
    """Local search of the mean step time at `batch_size` from `start`; with
    `max_copies` or `copy_price` (> 0: time units of mean step time per copy), a re-plan
    of `start` within that many copies, each move gaining more than its copies' price."""

_Transfer = tuple[float, Sequence[float], Sequence[float]]
_Topology = tuple[int, bool, _Transfer, _Transfer]

def topology_preset(name: str) -> _Topology:
    """A preset topology ("h800_normal", "h800_low_latency") as the tuple the core takes."""

def topology_comm_us(
    topology: _Topology, tokens: int, k: int, node_sum: int, num_gpus: int
) -> float:
    """Dispatch + combine time (us) of `tokens` tokens reaching `node_sum` nodes in all."""

def topology_subset_times(
    table: SubsetTable, placement: Placement, topology: _Topology, round_us: float
) -> npt.NDArray[np.float64]:
    """Time (us) of one token of each row: rounds x round_us plus communication, exact."""

def topology_batch_time(
    topk: npt.ArrayLike,
    placement: Placement,
    alpha: float,
    beta: float,
    p: float,
    topology: _Topology,
) -> tuple[float, float]:
    """(achievable time, lower bound) in us of one layer for a batch [B, k]."""

def improve_placement(
    table: SubsetTable,
    start: Placement,
    slots_per_gpu: int,
    topology: _Topology,
    round_us: float,
    max_moves: int | None,
    max_evaluations: int,
    seed: int,
    target: Placement | None = None,
    num_groups: int | None = None,
    copy_price: tuple[float, float] | None = None,
) -> tuple[Placement, int, list[tuple[int, float]]]:
    """(placement, replicas moved, path): `start` improved for the token time under the
    topology; with `num_groups`, each expert group stays on the node it has in `start`;
    with `copy_price` (in node, across nodes; us per token per copy), each move gains
    more than its copies' price. The path: (copies, expected time in us) from the start
    after each move when re-planning (a budget, a target or a price), else the start and
    the end."""

@final
class BatchSearchOptions:
    """The options that the batch searches with communication share, checked once when
    built: the machine (slots per GPU, cost model, topology) and the sample and effort."""

    def __new__(
        cls,
        *,
        slots_per_gpu: int,
        alpha: float,
        beta: float,
        p: float,
        topology: _Topology,
        batch_size: int,
        num_batches: int,
        seed: int,
        max_evaluations: int,
        num_groups: int | None = None,
    ) -> BatchSearchOptions: ...

def improve_batch_placement(
    table: SubsetTable,
    starts: Sequence[Placement],
    options: BatchSearchOptions,
    score_only: bool = False,
    validation: bool = False,
) -> tuple[Placement, float]:
    """(placement, mean time us on the sample): the best start improved for the layer time
    of sampled batches with communication (or, with score_only, one placement's time)."""

def replan_batch_placement(
    table: SubsetTable,
    current: Placement,
    options: BatchSearchOptions,
    max_moves: int | None = None,
    copy_price: float = 0.0,
    target: Placement | None = None,
) -> tuple[Placement, float, int, list[tuple[int, float]]]:
    """(placement, mean time us on the sample, copies, path): `current` re-planned by the
    batch search with communication within max_moves copies and copy_price us per copy,
    half the candidates toward `target`; the path as (copies, sample mean time)."""

def topology_group_nodes(placement: Placement, num_groups: int, gpus_per_node: int) -> list[int]:
    """The node of each expert group when every group lives on one node."""

def topology_check(
    topology: _Topology,
    num_experts: int,
    num_gpus: int,
    slots_per_gpu: int,
    num_groups: int | None = None,
) -> None:
    """ValueError unless the topology fits `num_gpus` GPUs and `num_groups` expert groups
    can each live on one node with `slots_per_gpu` slots per GPU."""

def topology_regroup(
    table: SubsetTable,
    placement: Placement,
    slots_per_gpu: int,
    topology: _Topology,
    round_us: float,
    num_groups: int,
) -> Placement:
    """`placement` made to keep each expert group on one node, every GPU full."""

def topology_spread_groups(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    topology: _Topology,
    round_us: float,
    num_groups: int,
) -> Placement:
    """A placement keeping each expert group on one node, from the table's co-activation."""

def topology_eplb_hierarchical(
    table: SubsetTable,
    num_gpus: int,
    slots_per_gpu: int,
    gpus_per_node: int,
    num_groups: int,
) -> Placement | None:
    """DeepSeek EPLB's hierarchical placement (None where EPLB takes its global policy)."""

def replan_placement(
    table: SubsetTable,
    current: Placement,
    slots_per_gpu: int,
    max_moves: int | None = None,
    copy_cost: float = 0.0,
    target: Placement | None = None,
) -> tuple[Placement, int, float, list[tuple[int, float]], tuple[Placement, int, float] | None]:
    """(placement, copies, expected cost, walk [(copies, cost)], (relabelled target, its
    copies, its cost) or None): `current` re-planned with at most `max_moves` copies."""

def relabel_gpus(current: Placement, target: Placement, gpus_per_node: int) -> Placement:
    """`target` with its GPUs renamed to share the most replicas with `current`."""

def replica_copies(current: Placement, placement: Placement) -> int:
    """Replicas of `placement` that `current` lacks on their GPU (weight copies)."""

def interrupt() -> None:
    """Stops every running core call (each raises KeyboardInterrupt); for Python code that
    catches KeyboardInterrupt while other threads run core calls."""
