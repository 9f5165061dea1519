"""The dispatch's entry point: checks the ids and picks the per-token or the batch rule."""

from __future__ import annotations

from typing import Any

from moefast.batch.cost_model import CostModel
from moefast.dispatch.backend import backend_of
from moefast.dispatch.batch import route_batch
from moefast.dispatch.replicas import ReplicaTable
from moefast.dispatch.tokens import route_tokens


def route(
    topk_ids: Any,
    table: ReplicaTable,
    *,
    cost_model: CostModel | None = None,
    check: bool = True,
) -> Any:
    """Physical slot ids for the logical ``topk_ids`` [tokens, k] (numpy or torch, any
    integer dtype; the result has the input's dtype and device).

    Without ``cost_model``, or for one token, every token's replicas minimize its busiest
    GPU (exact when the token has at most `ENUMERATION_LIMIT` replica combinations). With
    a cost model and more tokens, the batch is balanced over replicas for the least step
    time. ``check`` verifies the ids (a device-to-host copy on a GPU; an engine that
    trusts its router passes False)."""
    if not isinstance(table, ReplicaTable):
        raise TypeError(f"table must be a ReplicaTable, got {type(table).__name__}")
    if cost_model is not None and not isinstance(cost_model, CostModel):
        raise TypeError(f"cost_model must be a CostModel or None, got {type(cost_model).__name__}")
    ops = backend_of(topk_ids)
    shape = tuple(topk_ids.shape)
    if len(shape) != 2:
        raise ValueError(f"topk_ids must be [tokens, k], got shape {shape}")
    ids = ops.asarray(topk_ids)
    if check and shape[0] * shape[1]:
        low, high = ops.item(ids.min()), ops.item(ids.max())
        if low < 0 or high >= table.num_experts:
            bad = low if low < 0 else high
            raise ValueError(
                f"topk_ids holds expert {bad}, out of range [0, {table.num_experts}) of the table"
            )
    if cost_model is None or shape[0] <= 1:
        out = route_tokens(ids, table, ops)
    else:
        out = route_batch(ids, table, cost_model, ops)
    return ops.as_dtype(out, topk_ids)
