"""Routing traces: which experts each token picked in each MoE layer.

A `Trace` is the common form every reader produces and every planner consumes; it turns
into one `SubsetTable` per layer. `load_trace` reads any supported format, `Trace.save`
writes the native ``.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moefast._core import MAX_EXPERTS, SubsetTable
from moefast._util.atomic import atomic_open
from moefast._util.checks import check_int, check_layer_ids
from moefast._util.parallel import per_core
from moefast.splits import fold_positions, split_positions

PathLike = str | os.PathLike

#: `Trace.source` of traces made by `moefast.io.synthetic.synthetic_trace`: every figure
#: computed on them says so.
SYNTHETIC = "synthetic"
#: The words that mark figures computed on a synthetic trace.
SYNTHETIC_MARK = "SYNTHETIC routing (moefast synth), not a recorded trace"


@dataclass(eq=False)  # arrays have no single truth value: compare traces by their fields
class Trace:
    """Top-k expert ids of every token in every MoE layer.

    ``topk`` is int [tokens, layers, k]; ``layer_ids`` are the model's layer numbers of
    the ``layers`` axis (DeepSeek-V3's first MoE layer is 3); ``weights`` optionally give
    each token a weight (say, how many times a request repeats), float [tokens];
    ``request_ids`` optionally name the request each token belongs to, int [tokens] (held-out
    splits and bootstrap intervals keep a request's tokens together); ``source`` optionally
    says where the routing comes from (`SYNTHETIC` for generated traces: plans and reports
    on them are marked).
    Layers are addressed by their position on the ``layers`` axis in `table`;
    `layer_ids` tells which model layer a position is. Tokens are in time order.
    """

    topk: np.ndarray
    num_experts: int
    layer_ids: list[int] = field(default_factory=list)
    weights: np.ndarray | None = None
    request_ids: np.ndarray | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        topk = np.asarray(self.topk)
        if topk.ndim != 3:
            raise ValueError(f"topk must be int [tokens, layers, k], got shape {topk.shape}")
        if topk.size and topk.dtype.kind not in "iu":
            raise TypeError(f"topk must hold integer expert ids, got dtype {topk.dtype}")
        self.num_experts = check_int("num_experts", self.num_experts, 1, MAX_EXPERTS)
        tokens, layers, k = topk.shape
        if tokens < 1:
            # An empty trace has no statistics: inspect would print nan, plan fail later.
            raise ValueError("topk has 0 tokens: a trace needs at least one")
        if layers < 1:
            raise ValueError("topk has 0 layers: a trace needs at least one")
        if k < 1:
            raise ValueError("topk has k = 0: every token needs at least one expert")
        if topk.size:
            # Checked before the cast to int32, which would wrap ids of 2^32 + e onto e.
            low, high = int(topk.min()), int(topk.max())
            if low < 0 or high >= self.num_experts:
                bad = low if low < 0 else high
                raise ValueError(
                    f"topk holds expert id {bad}, out of range [0, {self.num_experts})"
                )
        self.topk = topk.astype(np.int32, copy=False)
        if self.topk.size:
            ordered = np.sort(self.topk, axis=2)
            dup = np.nonzero((ordered[:, :, 1:] == ordered[:, :, :-1]).any(axis=2))
            if dup[0].size:
                t, pos = int(dup[0][0]), int(dup[1][0])
                raise ValueError(
                    f"token {t} picks expert {self.topk[t, pos].tolist()} at layer position {pos}:"
                    " an expert appears twice"
                )
        if self.layer_ids is None or len(self.layer_ids) == 0:  # an array has no truth value
            self.layer_ids = list(range(layers))
        self.layer_ids = check_layer_ids(self.layer_ids)
        if len(self.layer_ids) != layers:
            raise ValueError(f"layer_ids has {len(self.layer_ids)} entries for {layers} layers")
        if len(set(self.layer_ids)) != layers:
            raise ValueError(f"layer_ids repeat a layer: {self.layer_ids}")
        if self.weights is not None:
            w = np.asarray(self.weights)
            if w.size and w.dtype.kind not in "iuf":
                raise TypeError(f"weights must hold real numbers, got dtype {w.dtype}")
            w = w.astype(np.float64)
            if w.shape != (tokens,):
                raise ValueError(
                    f"weights must be float [tokens] = [{tokens}], got shape {w.shape}"
                )
            if not np.all(np.isfinite(w)) or (w < 0).any():
                raise ValueError("weights must be finite and non-negative")
            with np.errstate(over="ignore"):
                total = w.sum()
            if not np.isfinite(total):
                raise ValueError("weights sum to inf: scale them down")
            self.weights = w
        if self.request_ids is not None:
            r = np.asarray(self.request_ids)
            if r.size and r.dtype.kind not in "iu":
                raise TypeError(f"request_ids must hold integers, got dtype {r.dtype}")
            if r.shape != (tokens,):
                raise ValueError(
                    f"request_ids must be int [tokens] = [{tokens}], got shape {r.shape}"
                )
            if r.dtype.kind == "u" and r.size and int(r.max()) > np.iinfo(np.int64).max:
                raise ValueError("request_ids must fit in int64")
            self.request_ids = r.astype(np.int64)
        if self.source is not None and not isinstance(self.source, str):
            raise TypeError(f"source must be a str or None, got {type(self.source).__name__}")

    @property
    def synthetic(self) -> bool:
        """Whether the routing was generated (`SYNTHETIC`), not recorded."""
        return self.source == SYNTHETIC

    @property
    def num_tokens(self) -> int:
        return self.topk.shape[0]

    @property
    def num_layers(self) -> int:
        return self.topk.shape[1]

    @property
    def k(self) -> int:
        return self.topk.shape[2]

    def __repr__(self) -> str:
        return (
            f"Trace(tokens={self.num_tokens}, layers={self.num_layers}, k={self.k},"
            f" num_experts={self.num_experts}, layer_ids={self.layer_ids[0]}..{self.layer_ids[-1]},"
            f" weighted={self.weights is not None},"
            f" requests={'-' if self.request_ids is None else len(np.unique(self.request_ids))}"
            + ("" if self.source is None else f", source={self.source!r}")
            + ")"
        )

    def table(self, layer: int) -> SubsetTable:
        """The subset-frequency table of the layer at position ``layer``
        (0 <= layer < num_layers)."""
        if not -self.num_layers <= layer < self.num_layers:
            raise IndexError(f"layer position {layer} out of range for {self.num_layers} layers")
        return SubsetTable.from_topk(
            np.ascontiguousarray(self.topk[:, layer, :]), self.num_experts, self.weights
        )

    def tables(self) -> list[SubsetTable]:
        """One `SubsetTable` per layer, in the order of `layer_ids` (built on a thread per
        core: the core counts without the GIL)."""
        return per_core(self.table, range(self.num_layers))

    def tables_with_rows(self) -> tuple[list[SubsetTable], list[np.ndarray]]:
        """`tables`, and for each layer the row of its table holding each token's subset
        (int64 [tokens]; `SubsetTable.from_topk_with_rows`): a token's cost under a
        placement is its row's."""

        def build(layer: int) -> tuple[SubsetTable, np.ndarray]:
            return SubsetTable.from_topk_with_rows(
                np.ascontiguousarray(self.topk[:, layer, :]), self.num_experts, self.weights
            )

        built = per_core(build, range(self.num_layers))
        return [t for t, _ in built], [r for _, r in built]

    def expert_load(self) -> np.ndarray:
        """Token-expert assignments per expert (weighted if the trace is), float [layers, E]."""
        load = np.zeros((self.num_layers, self.num_experts))
        w = np.ones(self.num_tokens) if self.weights is None else self.weights
        for layer in range(self.num_layers):
            ids = self.topk[:, layer, :]
            load[layer] = np.bincount(
                ids.ravel(), weights=np.repeat(w, self.k), minlength=self.num_experts
            )
        return load

    def select_layers(self, positions: Sequence[int]) -> Trace:
        """A trace of the layers at ``positions`` only."""
        positions = list(positions)
        return Trace(
            self.topk[:, positions, :],
            self.num_experts,
            [self.layer_ids[p] for p in positions],
            self.weights,
            self.request_ids,
            self.source,
        )

    def select_tokens(self, index: np.ndarray | slice) -> Trace:
        """A trace of the tokens at ``index`` (a slice, int positions or a bool mask)."""
        return Trace(
            self.topk[index],
            self.num_experts,
            self.layer_ids,
            None if self.weights is None else self.weights[index],
            None if self.request_ids is None else self.request_ids[index],
            self.source,
        )

    def split(self, test_fraction: float, by: str = "time", seed: int = 0) -> tuple[Trace, Trace]:
        """(train, test): ``test_fraction`` of the tokens held out for scoring.

        ``by="time"``: the first tokens train, the last ``test_fraction`` test (what a user
        who records today and deploys tomorrow sees). ``by="request"``: whole requests,
        drawn at random with ``seed``, go to the test part until it holds at least
        ``test_fraction`` of the tokens; needs ``request_ids`` and at least two requests.
        """

        train, test = split_positions(self, test_fraction, by, seed)
        return self.select_tokens(train), self.select_tokens(test)

    def folds(self, k: int, by: str = "time", seed: int = 0) -> list[tuple[Trace, Trace]]:
        """k (train, test) pairs for cross-validation: every token is in exactly one test
        part. ``by="time"``: k consecutive blocks; ``by="request"``: requests dealt at random
        (with ``seed``) into k groups of about equal tokens."""

        return [
            (self.select_tokens(train), self.select_tokens(test))
            for train, test in fold_positions(self, k, by, seed)
        ]

    def save(self, path: PathLike) -> None:
        """Write the native ``.npz`` (``topk``, ``num_experts``, ``layer_ids``, and, when the
        trace has them, ``weights``, ``request_ids`` and ``source``)."""
        arrays = {
            "topk": self.topk,
            "num_experts": np.int64(self.num_experts),
            "layer_ids": np.asarray(self.layer_ids, dtype=np.int64),
        }
        if self.weights is not None:
            arrays["weights"] = self.weights
        if self.request_ids is not None:
            arrays["request_ids"] = self.request_ids
        if self.source is not None:
            arrays["source"] = np.str_(self.source)
        path = Path(path)
        # np.savez appends ".npz" to other names, which would surprise the caller.
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
