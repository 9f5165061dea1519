"""A batch's tokens balanced over replicas (docs/guides/dispatch.md): the step time of
docs/cost-model.md#a-batch, where a GPU runs each expert it serves once for all the tokens
sent to it and the layer takes as long as its busiest GPU.

Only the token count of each expert matters, so the split is planned on the host from the
per-expert counts (one copy of E integers from the device) by the solver behind
`moefast.batch.times.batch_time` (`batch_split`): the batch runs in the time moefast reports
for it. The pairs of an expert then go to its replicas in token order, on the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moefast.batch.cost_model import CostModel
from moefast.batch.times import batch_split
from moefast.dispatch.backend import Numpy
from moefast.dispatch.replicas import ReplicaTable


def replica_shares(counts: Any, table: ReplicaTable, cost_model: CostModel) -> np.ndarray:
    """int [E, R]: the tokens each replica of each expert serves (replicas in the table's
    order) for a batch of ``counts`` [E] tokens per expert."""
    _, split = batch_split(counts, table.placement, cost_model)
    shares = np.take_along_axis(split, table.gpu, axis=1)
    shares[np.arange(shares.shape[1])[None, :] >= table.count[:, None]] = 0
    return shares


def route_batch(ids: Any, table: ReplicaTable, cost_model: CostModel, ops: Numpy) -> Any:
    """Physical slot ids [T, k] for logical ids [T, k] (checked by the caller)."""
    physical, _, _ = table.arrays(ops)
    t, k = ids.shape
    flat = ids.reshape(-1)
    counts = ops.bincount(flat, table.num_experts)
    shares = replica_shares(ops.to_numpy(counts), table, cost_model)
    # Replica j of expert e serves its pairs ranked [ends[e, j-1], ends[e, j]) in token order.
    ends = ops.asarray(np.cumsum(shares, axis=1))
    order = ops.stable_argsort(flat, 0)
    start = ops.cumsum(counts) - counts
    rank = ops.zeros((t * k,))
    rank[order] = ops.arange(t * k) - start[flat[order]]
    replica = (rank[:, None] >= ends[flat]).sum(1)
    return physical[flat, replica].reshape(t, k)
