"""Subset tables derived from the real routing data in ../shared/data and the bundled trace.

- Mixtral-8x7B (E=8, top-2), one table per layer, from the per-question expert fractions of
  all 14,042 MMLU test questions: within a question, tokens are taken to pick pairs with
  probability proportional to f_i * f_j (i != j). Co-activation then comes only from how
  load varies from question to question, so these tables understate real co-activation.
- DBRX-size (E=16, top-4), from the bundled real gpt-oss-20b decode trace: per layer, the 16
  most loaded experts and the tokens whose four experts all lie among them (118-411 of 645
  tokens per layer); a real, conditioned co-activation table.
"""

from __future__ import annotations

from itertools import combinations

import moefast as mf
import numpy as np
from moefast.data import GPTOSS20B_DECODE
from support.shared_data import SHARED_DATA

MIXTRAL_FRACTIONS = SHARED_DATA / "mixtral_mmlu_expert_fractions" / "frac_vecs"


def mixtral_tables() -> list[mf.SubsetTable]:
    fractions = np.concatenate(
        [np.load(p) for p in sorted(MIXTRAL_FRACTIONS.glob("*.npy"))]
    ).astype(np.float64)
    pairs = np.array(list(combinations(range(8), 2)))
    tables = []
    for layer in range(fractions.shape[1]):
        f = fractions[:, layer, :]
        pair_mass = f[:, pairs[:, 0]] * f[:, pairs[:, 1]]
        pair_mass /= pair_mass.sum(axis=1, keepdims=True)
        tables.append(mf.SubsetTable.from_subsets(pairs, pair_mass.sum(axis=0), num_experts=8))
    return tables


def gptoss_dbrx_size_tables() -> list[mf.SubsetTable]:
    topk = np.load(GPTOSS20B_DECODE)["topk"]
    tables = []
    for layer in range(topk.shape[1]):
        ids = topk[:, layer, :]
        hottest = np.argsort(-np.bincount(ids.ravel(), minlength=32), kind="stable")[:16]
        relabel = np.full(32, -1)
        relabel[hottest] = np.arange(16)
        kept = relabel[ids]
        kept = kept[(kept >= 0).all(axis=1)]
        tables.append(mf.SubsetTable.from_topk(kept, num_experts=16))
    return tables
