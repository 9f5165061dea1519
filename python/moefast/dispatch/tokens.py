"""Each token's replicas chosen to make its busiest GPU least busy (docs/guides/dispatch.md): the
single-token cost of docs/cost-model.md#one-token, computed exactly.

A token's experts with one replica fix a load on their GPUs. For the replicated ones the
choices that matter are GPUs (`ReplicaTable` keeps one slot per GPU), and every
combination of them is scored at once: a combination's cost is the most experts any GPU
serves, the fixed ones included. The first combination of least cost wins, in the order
of each expert's preferred replicas. Tokens are grouped by their number of combinations
so that a token with two choices does not pay for one with a thousand. A token with more
than `ENUMERATION_LIMIT` combinations takes its replicated experts one by one, each on
its least loaded GPU (exact for most tokens, never checked against the optimum).
"""

from __future__ import annotations

from typing import Any

from moefast.dispatch.backend import Numpy
from moefast.dispatch.replicas import ReplicaTable

#: Largest number of replica combinations of one token scored exhaustively.
ENUMERATION_LIMIT = 4096
#: Tokens are grouped by combination count at these sizes (the last is the limit).
_GROUPS = (4, 16, 64, 256, 1024, ENUMERATION_LIMIT)
#: Most (token, combination, expert, expert) comparisons held at once.
_CHUNK_CELLS = 1 << 22


def route_tokens(ids: Any, table: ReplicaTable, ops: Numpy) -> Any:
    """Physical slot ids [T, k] for logical ids [T, k] (checked by the caller)."""
    physical, gpu, count = table.arrays(ops)
    t, k = ids.shape
    choice = ops.zeros((t, k))
    g0 = gpu[ids, 0]
    c = count[ids]
    single = c == 1
    replicated = ~single
    if t == 0 or not ops.item(replicated.sum()):
        return physical[ids, choice]
    # Experts of one replica on each column's GPU (its replica 0): [T, k].
    same = (g0[:, :, None] == g0[:, None, :]) & single[:, None, :]
    fixed_here = same.sum(2)
    base = ops.amax(ops.where(single, fixed_here, 0), 1)
    m = ops.item(ops.amax(replicated.sum(1), 0))
    # The replicated columns first, in their original order.
    cols = ops.stable_argsort(single * 1, 1)[:, :m]
    rc = ops.take_along(c, cols, 1)
    rvalid = ops.take_along(replicated, cols, 1)
    rc = ops.where(rvalid, rc, 1)
    rg = gpu[ops.take_along(ids, cols, 1)]  # [T, m, R]
    combos = ops.zeros((t,)) + 1
    for j in range(m):
        combos = ops.cap(combos * rc[:, j], ENUMERATION_LIMIT + 1)
    stride = ops.zeros((t, m)) + 1
    for j in range(1, m):
        stride[:, j] = ops.cap(stride[:, j - 1] * rc[:, j - 1], ENUMERATION_LIMIT + 1)
    ctx = _Token(g0, single, base, rg, rc, rvalid, stride)
    lower = 1
    for upper in _GROUPS:
        rows = ops.nonzero((combos > lower) & (combos <= upper))
        lower = upper
        n = int(rows.shape[0])
        if not n:
            continue
        size = ops.item(ops.amax(combos[rows], 0))
        step = max(1, _CHUNK_CELLS // (size * m * (m + k)))
        for s in range(0, n, step):
            part = rows[s : s + step]
            best = ctx.best_combination(part, size, ops)
            choice[part[:, None], cols[part]] = best
    rest = ops.nonzero(combos > ENUMERATION_LIMIT)
    if int(rest.shape[0]):
        choice[rest[:, None], cols[rest]] = ctx.one_by_one(rest, ops)
    return physical[ids, choice]


class _Token:
    """The arrays of one batch that the combinations are scored against."""

    def __init__(
        self, g0: Any, single: Any, base: Any, rg: Any, rc: Any, rvalid: Any, stride: Any
    ) -> None:
        self.g0, self.single, self.base = g0, single, base
        self.rg, self.rc, self.rvalid, self.stride = rg, rc, rvalid, stride

    def _load(self, rows: Any, chosen: Any, counted: Any) -> Any:
        """Experts on each chosen GPU: [n, C, m], from the fixed ones and the chosen
        replicated ones (``counted``: [n, 1 or C, m] which chosen columns count)."""
        g0 = self.g0[rows][:, None, None, :]
        single = self.single[rows][:, None, None, :]
        fixed = ((chosen[..., None] == g0) & single).sum(3)
        mine = ((chosen[..., :, None] == chosen[..., None, :]) & counted[..., None, :]).sum(3)
        return fixed + mine

    def best_combination(self, rows: Any, size: int, ops: Numpy) -> Any:
        """The least-cost choice [n, m] of the tokens ``rows``, each with at most ``size``
        combinations."""
        rc = self.rc[rows][:, None, :]
        combo = ops.arange(size)[None, :, None]
        total = (self.stride[rows] * self.rc[rows])[:, -1:][:, :, None]
        pick = (combo % total) // self.stride[rows][:, None, :] % rc  # [n, C, m]
        rg = self.rg[rows]  # [n, m, R]
        n = rg.shape[0]
        chosen = ops.take_along(rg[:, None, :, :], pick[..., None], 3)[..., 0]
        valid = self.rvalid[rows][:, None, :]
        load = self._load(rows, chosen, valid)
        cost = ops.amax(ops.where(valid, load, 0), 2)
        cost = ops.where(cost > self.base[rows][:, None], cost, self.base[rows][:, None])
        best = cost.argmin(1)
        return pick[ops.arange(n), best]

    def one_by_one(self, rows: Any, ops: Numpy) -> Any:
        """Replicated experts taken in column order, each on its least loaded GPU."""
        rg = self.rg[rows]
        n, m, r = rg.shape
        out = ops.zeros((n, m))
        chosen = rg[:, :, 0] * 0 - 1
        for j in range(m):
            cand = rg[:, j, :]  # [n, R]
            fixed = (
                (cand[:, :, None] == self.g0[rows][:, None, :]) & self.single[rows][:, None, :]
            ).sum(2)
            mine = (cand[:, :, None] == chosen[:, None, :]).sum(2)
            load = fixed + mine
            usable = ops.arange(r)[None, :] < self.rc[rows][:, j : j + 1]
            load = ops.where(usable, load, 1 << 30)
            pick = load.argmin(1)
            out[:, j] = ops.where(self.rvalid[rows][:, j], pick, 0)
            chosen[:, j] = ops.where(self.rvalid[rows][:, j], cand[ops.arange(n), pick], -1)
        return out
