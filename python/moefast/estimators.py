"""Subset tables that generalize: what to plan on when a trace has few tokens per subset.

With few tokens per distinct subset, the empirical table overfits: a placement planned on it
splits pairs that happened to co-occur and ignores subsets that did not occur yet. The
``shrink`` estimator mixes the empirical table with a smoother model of the same layer, built
only from expert loads and pair co-activation counts, which puts mass on unseen subsets made
of pairs that are often seen together. Which estimator (and how much shrinkage) to use is
chosen by cross-validation on the train part only (`moefast.selection`).
"""

from __future__ import annotations

import numpy as np

from moefast._core import SubsetTable
from moefast.coactivation import coactivation

#: Subsets drawn from the pair model of one layer.
MODEL_SAMPLES = 20_000


def pair_model_sample(
    table: SubsetTable, samples: int = MODEL_SAMPLES, seed: int = 0
) -> np.ndarray:
    """int [samples, k]: subsets drawn from a model built from expert and pair marginals.

    The first expert is drawn by load; each next one with probability proportional to its
    co-activation with the experts already drawn (plus a little of its load, so an expert
    never seen beside them stays possible)."""
    rng = np.random.default_rng(seed)
    e, k = table.num_experts, table.k
    pair = coactivation(table).astype(np.float32)
    load = np.diag(pair).copy()
    np.fill_diagonal(pair, 0.0)
    smoothing = (
        np.float32(0.1 / max(k - 1, 1))
        * load
        / max(float(load.sum()), 1e-300)
        * max(float(pair.sum(axis=1).mean()), 1e-30)
    )
    chosen = np.zeros((samples, k), dtype=np.int64)
    score = np.tile(load, (samples, 1))
    taken = np.zeros((samples, e), dtype=bool)
    for step in range(k):
        if step:
            score = score + pair[chosen[:, step - 1]]
        weights = np.where(taken, 0.0, score + (smoothing if step else 0.0))
        cumulative = np.cumsum(weights, axis=1)
        draw = rng.random(samples) * cumulative[:, -1]
        pick = (cumulative < draw[:, None]).sum(axis=1)
        pick = np.minimum(pick, e - 1)
        chosen[:, step] = pick
        taken[np.arange(samples), pick] = True
        if step == 0:
            score = np.zeros((samples, e), dtype=np.float32)
    return np.sort(chosen, axis=1)


def shrunk_table(
    table: SubsetTable, strength: float, samples: int = MODEL_SAMPLES, seed: int = 0
) -> SubsetTable:
    """(1 - strength) x the empirical frequencies + strength x the pair model's."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 0:
        return table
    model = pair_model_sample(table, samples, seed)
    weights = np.concatenate(
        [
            (1 - strength) * table.weights / table.total_weight,
            np.full(len(model), strength / len(model)),
        ]
    )
    subsets = np.concatenate([table.subsets, model])
    return SubsetTable.from_subsets(subsets, weights * table.total_weight, table.num_experts)
