"""Batches of tokens (several requests per step): the per-expert cost model fitted to GPU
timings (`CostModel`) and the step times it gives (`batch_time`, `simulate`). The
batch-aware search is in `moefast.search.batch`."""

from moefast.batch.cost_model import CostModel
from moefast.batch.times import batch_time, mean_step_time, simulate

__all__ = ["CostModel", "batch_time", "mean_step_time", "simulate"]
