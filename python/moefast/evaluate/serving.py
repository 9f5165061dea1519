"""Placements scored the way a model is served: the simulated step time of every candidate
at every batch size of a serving profile, and its single-token expert rounds, on the same
tokens (held out when the plan held some out), and the candidate of least expected step
time over the profile.

Step times are `moefast.batch.times.simulate`'s (the best replica choice per token, the cost
model's unit: us for presets and fits), summed over the layers; the same sampled batches
score every candidate (one seed), so differences are paired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moefast._core import Placement, SubsetTable, expected_cost
from moefast._util.progress import steps as shown_steps
from moefast.batch.cost_model import CostModel
from moefast.batch.times import Routing, simulate
from moefast.trace import SYNTHETIC_MARK

#: The placements a served recommendation must not lose to without a warning.
REFERENCES = ("engine default", "EPLB")


def regime(batch_size: int, basis: str) -> str:
    """The words every figure carries: its objective and the tokens it was measured on."""
    return f"B = {batch_size} step time, {basis}"


ROUNDS_REGIME = "single token (B = 1) expert rounds"


@dataclass(frozen=True)
class ServingScores:
    """Each candidate's step time (summed over layers) at each batch size, and its expert
    rounds per token per layer (single tokens), on ``basis`` tokens ("held-out" or
    "in-sample", ``note`` says which)."""

    batch_sizes: tuple[int, ...]
    weights: tuple[float, ...]
    step_times: dict[str, dict[int, float]]
    rounds: dict[str, np.ndarray]
    basis: str
    note: str
    cost_model: str
    #: Scored on generated routing (a synthetic trace): the headline says so first.
    synthetic: bool = False

    def expected_step_time(self, name: str) -> float:
        """The profile's weighted mean of the candidate's step times."""
        times = self.step_times[name]
        return float(sum(w * times[b] for b, w in zip(self.batch_sizes, self.weights, strict=True)))

    @property
    def recommended(self) -> str:
        """The candidate of least expected step time (the first of equals, in the order
        the candidates were given)."""
        return min(self.step_times, key=self.expected_step_time)

    def references(self) -> list[str]:
        """The candidates named by `REFERENCES` (engine default and EPLB) present here."""
        return [n for n in self.step_times if n.startswith(REFERENCES)]

    def warnings(self, name: str | None = None) -> list[str]:
        """One line per batch size where ``name`` (default: the recommended candidate) is
        slower than the engine default or EPLB, with the loss."""
        name = self.recommended if name is None else name
        lines = []
        for b in self.batch_sizes:
            mine = self.step_times[name][b]
            for ref in self.references():
                theirs = self.step_times[ref][b]
                if ref != name and mine > theirs * (1 + 1e-9):
                    lines.append(
                        f"warning: at B = {b} {name} is {mine / theirs - 1:.1%} slower than"
                        f" {ref} ({mine:.1f} against {theirs:.1f} us per step,"
                        f" {regime(b, self.basis)})"
                    )
        return lines

    def headline(self) -> str:
        """One line: the recommendation, its expected step time and its lead over the
        engine default and EPLB, naming the regime."""
        name = self.recommended
        mine = self.expected_step_time(name)
        text = (
            f"recommended: {name}, {mine:.1f} us expected step time over the profile"
            f" ({self.describe_profile()}; {self.basis})"
        )
        leads = []
        for ref in self.references():
            if ref != name:
                gain = 1 - mine / self.expected_step_time(ref)
                leads.append(f"{abs(gain):.1%} {'below' if gain >= 0 else 'above'} {ref}")
        text += ": " + ", ".join(leads) if leads else ""
        return f"[{SYNTHETIC_MARK}] {text}" if self.synthetic else text

    def describe_profile(self) -> str:
        return ", ".join(
            f"B = {b}" + ("" if len(self.batch_sizes) == 1 else f" {w:.0%}")
            for b, w in zip(self.batch_sizes, self.weights, strict=True)
        )

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the candidates' table: rounds, step time at each B (us) and
        expected step time; the recommended candidate marked."""
        header = [
            "candidate",
            "B = 1 rounds/layer",
            *(f"B = {b} (us)" for b in self.batch_sizes),
            "expected (us)",
        ]
        rows = []
        best = self.recommended
        for name, times in self.step_times.items():
            rows.append(
                [
                    name + (" *" if name == best else ""),
                    f"{float(np.mean(self.rounds[name])):.3f}",
                    *(f"{times[b]:.1f}" for b in self.batch_sizes),
                    f"{self.expected_step_time(name):.1f}",
                ]
            )
        return header, rows

    def as_settings(self) -> dict[str, Any]:
        """A JSON-ready record; every figure's key names its regime."""
        return {
            **({"synthetic": True} if self.synthetic else {}),
            "profile": {str(b): w for b, w in zip(self.batch_sizes, self.weights, strict=True)},
            "basis": self.basis,
            "note": self.note,
            "cost_model": self.cost_model,
            "dispatch": "best replica choice",
            "recommended": self.recommended,
            "headline": self.headline(),
            "warnings": self.warnings(),
            "candidates": {
                name: {
                    "step_time_us": {regime(b, self.basis): times[b] for b in self.batch_sizes},
                    "expected_step_time_us": self.expected_step_time(name),
                    f"{ROUNDS_REGIME} per layer, {self.basis}": float(np.mean(self.rounds[name])),
                }
                for name, times in self.step_times.items()
            },
        }


def settings_rows(record: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """`ServingScores.rows` of a record written by `ServingScores.as_settings`."""
    basis = record["basis"]
    sizes = [int(b) for b in record["profile"]]
    header = [
        "candidate",
        "B = 1 rounds/layer",
        *(f"B = {b} (us)" for b in sizes),
        "expected (us)",
    ]
    rows = []
    for name, entry in record["candidates"].items():
        times = entry["step_time_us"]
        rows.append(
            [
                name + (" *" if name == record["recommended"] else ""),
                f"{entry[f'{ROUNDS_REGIME} per layer, {basis}']:.3f}",
                *(f"{times[regime(b, basis)]:.1f}" for b in sizes),
                f"{entry['expected_step_time_us']:.1f}",
            ]
        )
    return header, rows


def score_candidates(
    routing: Routing,
    tables: Sequence[SubsetTable],
    candidates: Mapping[str, Sequence[Placement]],
    batch_sizes: Sequence[int],
    weights: Sequence[float],
    cost_model: CostModel,
    *,
    basis: str,
    note: str,
    cost_model_note: str = "",
    seed: int = 0,
    steps: int = 256,
    progress: bool = False,
) -> ServingScores:
    """Every candidate (one placement per layer) simulated on ``routing`` (a trace: the same
    tokens in every layer; or one table per layer) at each batch size, and its expected
    rounds on ``tables`` (one per layer); ``progress`` shows the candidates scored on
    stderr."""
    sizes = tuple(int(b) for b in batch_sizes)
    step_times: dict[str, dict[int, float]] = {}
    rounds: dict[str, np.ndarray] = {}
    named = candidates.items()
    for name, placements in shown_steps(
        named, len(named), "scoring the candidates on the serving profile", progress
    ):
        results = simulate(routing, list(placements), sizes, cost_model, seed=seed, steps=steps)
        step_times[name] = {int(r["batch_size"]): float(r["mean_step_time"]) for r in results}
        rounds[name] = np.array(
            [expected_cost(t, p) for t, p in zip(tables, placements, strict=True)]
        )
    return ServingScores(
        sizes,
        tuple(float(w) for w in weights),
        step_times,
        rounds,
        basis,
        note,
        cost_model_note or repr(cost_model),
    )
