"""A co-activation-aware dispatch for engines (docs/guides/dispatch.md): logical top-k expert ids of
a batch in, physical slot ids out, the contract of SGLang's `topk_ids_logical_to_physical`.

One token (or no cost model): each token's replicas make its busiest GPU least busy, exactly
(`moefast.dispatch.tokens`). A batch with a cost model: the batch's tokens are balanced over
the replicas for the least step time (`moefast.dispatch.batch`). numpy arrays and torch
tensors are both taken, and the result is of the same kind, on the same device.
`moefast.dispatch.sglang` plugs it into SGLang.
"""

from moefast.dispatch.batch import replica_shares
from moefast.dispatch.replicas import ReplicaTable
from moefast.dispatch.route import route
from moefast.dispatch.sglang import SglangDispatch, install_sglang
from moefast.dispatch.tokens import ENUMERATION_LIMIT

__all__ = [
    "ENUMERATION_LIMIT",
    "ReplicaTable",
    "SglangDispatch",
    "install_sglang",
    "replica_shares",
    "route",
]
