"""Which experts are chosen together: the pair co-activation matrix and its strongest pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moefast._core import SubsetTable


def coactivation(table: SubsetTable) -> np.ndarray:
    """float [E, E]: weight of tokens picking both experts (diagonal: each expert's load)."""
    subsets, weights = table.subsets, table.weights
    e, k = table.num_experts, subsets.shape[1]
    pair_index = (subsets[:, :, None] * e + subsets[:, None, :]).reshape(len(subsets), k * k)
    flat = np.bincount(pair_index.ravel(), weights=np.repeat(weights, k * k), minlength=e * e)
    return flat.reshape(e, e)


def top_pairs(table: SubsetTable, count: int = 5) -> list[tuple[int, int, float, float]]:
    """The ``count`` most co-activated pairs: (expert, expert, share of tokens,
    share / uniform share)."""
    matrix = coactivation(table)
    e, k = table.num_experts, table.k
    upper = np.triu(matrix, 1)
    order = np.argsort(upper, axis=None)[::-1][:count]
    uniform = k * (k - 1) / (e * (e - 1)) if e > 1 else 1.0
    pairs = []
    for flat in order:
        i, j = np.unravel_index(flat, upper.shape)
        share = upper[i, j] / table.total_weight
        if share <= 0:
            break
        pairs.append((int(i), int(j), float(share), float(share / uniform)))
    return pairs


def hottest_layer(tables: Sequence[SubsetTable]) -> int:
    """Position of the layer whose most frequent pair holds the largest share of its tokens."""
    shares = [pairs[0][2] if (pairs := top_pairs(t, 1)) else 0.0 for t in tables]
    return int(np.argmax(shares))
