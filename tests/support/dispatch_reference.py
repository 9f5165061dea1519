"""Plain transcriptions of the engines' dispatch rules, for the tests of
`moefast.io.engines.dispatch`."""

from __future__ import annotations

import random

import numpy as np


def sglang_reference(phy2log: np.ndarray, num_gpus: int, seed: int = 42) -> np.ndarray:
    """int [G, L, E] of physical ids: SGLang's static map (commit 6270b01) step by step."""
    r = random.Random(seed)
    layers, physical = phy2log.shape
    experts = int(phy2log.max()) + 1
    local = physical // num_gpus
    out = np.full((num_gpus, layers, experts), -1)
    for layer in range(layers):
        for e in range(experts):
            candidates = [p for p in range(physical) if phy2log[layer, p] == e]
            for gpu in range(num_gpus):
                same = [p for p in candidates if p // local == gpu]
                if same:
                    out[gpu, layer, e] = same[0]
            todo = [gpu for gpu in range(num_gpus) if out[gpu, layer, e] == -1]
            q, rem = divmod(len(todo), len(candidates))
            picks = candidates * q + r.sample(candidates, k=rem)
            r.shuffle(picks)
            out[todo, layer, e] = picks
    return out
