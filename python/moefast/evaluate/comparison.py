"""Expected cost of a placement beside the baselines engines use, layer by layer, and the gain.

A `Comparison` says on which tokens its costs were measured (``basis``: "held-out" when the
placements never saw them, "in-sample" when they were planned on them) and, when it was
scored token by token, the bootstrap 95% interval of the gain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moefast._core import Placement
from moefast.trace import SYNTHETIC_MARK

BASELINES = ("contiguous", "round_robin", "eplb")
METHOD_LABELS = {
    "contiguous": "contiguous",
    "round_robin": "round-robin",
    "eplb": "EPLB",
    "greedy": "greedy",
    "milp": "MILP",
}
#: "evaluated": a given placement scored on a trace it may or may not have been planned on
#: (the note says which parts are which).
BASES = ("held-out", "in-sample", "evaluated")


@dataclass
class Comparison:
    """Expected cost (expert rounds per token) of each method in each layer.

    ``basis`` is "held-out" or "in-sample"; ``note`` says which tokens planned and which
    scored; ``gain_interval`` is the bootstrap 95% interval of `total_gain` (None when the
    costs come from tables without tokens), resampling ``units``.
    """

    layer_ids: list[int]
    costs: dict[str, np.ndarray]  # method -> float [layers]
    lower_bounds: np.ndarray
    main_method: str = "greedy"
    placements: dict[str, list[Placement]] = field(default_factory=dict)
    basis: str = "in-sample"
    note: str = ""
    gain_interval: tuple[float, float] | None = None
    units: str = ""
    #: What the main method's placements are when its name does not say (a batch-aware plan).
    main_label: str | None = None
    #: Scored on generated routing (a synthetic trace): the headline says so first.
    synthetic: bool = False

    def __post_init__(self) -> None:
        if self.basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {self.basis!r}")

    @property
    def baselines(self) -> list[str]:
        return [m for m in BASELINES if m in self.costs and m != self.main_method]

    @property
    def best_baseline(self) -> np.ndarray:
        """Per layer, the lowest cost among the baselines present (the main method left out)."""
        return np.min([self.costs[m] for m in self.baselines], axis=0)

    def gap(self) -> np.ndarray:
        """Per layer, how far the main method may be above the optimum: its cost over the
        lower bound, minus 1 (0.05 = at most 5% above any placement of these slots)."""
        return self.costs[self.main_method] / self.lower_bounds - 1

    def total_gap(self) -> float:
        """The whole model's gap: summed costs of the main method against summed bounds."""
        return float(self.costs[self.main_method].sum() / self.lower_bounds.sum() - 1)

    def gain(self) -> np.ndarray:
        """Per layer, the main method's relative saving over the best baseline (0.1 = 10%)."""
        best = self.best_baseline
        return (best - self.costs[self.main_method]) / best

    def total_gain(self) -> float:
        """The whole model's saving: summed costs of the main method against the summed
        per-layer best baselines."""
        best = self.best_baseline.sum()
        return float((best - self.costs[self.main_method].sum()) / best)

    def headline(self) -> str:
        """One line: the gain, its interval and its basis."""
        label = self.main_label or METHOD_LABELS.get(self.main_method, self.main_method)
        text = (
            f"{label}: {100 * self.total_gain():.1f}% below the best baseline in single-token"
            " (B = 1) expert rounds"
        )
        if self.synthetic:
            text = f"[{SYNTHETIC_MARK}] {text}"
        if self.gain_interval is not None:
            low, high = self.gain_interval
            text += f" (95% interval {100 * low:.1f}% to {100 * high:.1f}%)"
        text += f", {self.basis}"
        return text + (f": {self.note}" if self.note else "")
