"""Placements scored the way a model is served: the simulated step time of every candidate
at every batch size of a serving profile, and its single-token expert rounds, on the same
tokens (held out when the plan held some out), and the candidate of least expected step
time over the profile.

Step times are `moefast.batch.times.simulate`'s (the cost model's unit: us for presets and
fits), summed over the layers, under a dispatch (`moefast.io.engines.dispatch`: the engine's
rule, or the best replica choice) that every figure names; the same sampled batches score
every candidate (one seed), so differences are paired. A loss to the engine default or EPLB
within the tie tolerance (`ServingScores.tolerance`: twice the standard error of the paired
difference of the simulated steps, at least `TIE_TOLERANCE`) is reported as a tie, not a
warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from moefast._core import Placement, SubsetTable, dispatch_costs, expected_cost
from moefast._util.progress import steps as shown_steps
from moefast.batch.cost_model import CostModel
from moefast.batch.times import Routing, simulate, step_times
from moefast.io.engines.dispatch import (
    DISPATCH_LABELS,
    check_dispatch,
    dispatch_label,
    dispatch_maps,
)
from moefast.trace import SYNTHETIC_MARK

#: The placements a served recommendation must not lose to without a warning.
REFERENCES = ("engine default", "EPLB")

#: The least tie tolerance: a loss to a reference of at most this share of its step time is
#: a tie, not a warning, however many steps were simulated.
TIE_TOLERANCE = 0.001
#: Standard errors of the paired difference of the steps within which a loss is a tie.
TIE_STANDARD_ERRORS = 2.0

BEST_LABEL = DISPATCH_LABELS["best"]


def regime(batch_size: int, basis: str, dispatch: str = BEST_LABEL) -> str:
    """The words every figure carries: its objective, the tokens it was measured on and
    the dispatch (`moefast.io.engines.dispatch.dispatch_label`) it assumes."""
    return f"B = {batch_size} step time, {basis}, {dispatch}"


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
    #: The dispatch every figure assumes (`moefast.io.engines.dispatch.DISPATCHES`).
    dispatch: str = "best"
    #: The GPUs of the candidates.
    num_gpus: int | None = None
    #: Each candidate's redundant experts (slots x GPUs - experts), when known.
    redundant: dict[str, int] | None = None
    #: Each candidate's step times under the best replica choice, when asked for.
    best_step_times: dict[str, dict[int, float]] | None = None
    #: The experts per layer (with ``num_gpus``: the slots' count of redundant experts).
    num_experts: int | None = None
    #: Why the fewest redundant experts scored is not 0, or "".
    redundancy_note: str = ""
    #: Each candidate's simulated steps, float [sizes, steps] (the same steps for all).
    samples: dict[str, np.ndarray] | None = None

    def tolerance(self, name: str, ref: str, batch_size: int) -> float:
        """The share of ``ref``'s step time within which ``name`` ties with it at
        ``batch_size``: `TIE_STANDARD_ERRORS` standard errors of the paired difference of
        their simulated steps, at least `TIE_TOLERANCE`."""
        if self.samples is None:
            return TIE_TOLERANCE
        i = self.batch_sizes.index(batch_size)
        diff = self.samples[name][i] - self.samples[ref][i]
        if diff.size < 2:
            return TIE_TOLERANCE
        error = float(np.std(diff, ddof=1)) / np.sqrt(diff.size)
        return max(TIE_TOLERANCE, TIE_STANDARD_ERRORS * error / self.step_times[ref][batch_size])

    def label(self, batch_size: int) -> str:
        """The dispatch words of the figures at ``batch_size``."""
        return dispatch_label(self.dispatch)

    def regime(self, batch_size: int) -> str:
        return regime(batch_size, self.basis, self.label(batch_size))

    @property
    def rounds_regime(self) -> str:
        return f"{ROUNDS_REGIME}, {self.basis}, {self.label(1)}"

    def expected_step_time(self, name: str) -> float:
        """The profile's weighted mean of the candidate's step times."""
        return self._expected(self.step_times[name])

    def _expected(self, times: Mapping[int, float]) -> float:
        return float(sum(w * times[b] for b, w in zip(self.batch_sizes, self.weights, strict=True)))

    def with_best_choice(self) -> dict[str, Any] | None:
        """What the best replica choice (`moefast.dispatch` in the engine) would run: the
        candidate of least expected step time under it, that time, its redundant experts
        and its lead over the recommendation under this dispatch. None when the figures
        are already under the best choice or it was not simulated."""
        if self.best_step_times is None or self.dispatch == "best":
            return None
        expected = {name: self._expected(times) for name, times in self.best_step_times.items()}
        name = min(expected, key=expected.__getitem__)
        mine = self.expected_step_time(self.recommended)
        return {
            "candidate": name,
            "expected_step_time_us": expected[name],
            "redundant_experts": None if self.redundant is None else self.redundant[name],
            "below_recommended": 1 - expected[name] / mine,
        }

    @property
    def recommended(self) -> str:
        """The candidate of least expected step time (the first of equals, in the order
        the candidates were given)."""
        return min(self.step_times, key=self.expected_step_time)

    def references(self) -> list[str]:
        """The candidates named by `REFERENCES` (engine default and EPLB) present here."""
        return [n for n in self.step_times if n.startswith(REFERENCES)]

    def _losses(self, name: str | None, ties: bool) -> list[str]:
        name = self.recommended if name is None else name
        lines = []
        for b in self.batch_sizes:
            mine = self.step_times[name][b]
            for ref in self.references():
                theirs = self.step_times[ref][b]
                if ref == name or mine <= theirs * (1 + 1e-9):
                    continue
                tolerance = self.tolerance(name, ref, b)
                if (mine > theirs * (1 + tolerance)) != ties:
                    loss = f"{mine / theirs - 1:.2%}" if ties else f"{mine / theirs - 1:.1%}"
                    lines.append(
                        f"{'tie' if ties else 'warning'}: at B = {b} {name} is"
                        f" {loss} slower than {ref} ({mine:.1f} against"
                        f" {theirs:.1f} us per step, {self.regime(b)}"
                        + (f"; within the tie tolerance, {tolerance:.2%})" if ties else ")")
                    )
        return lines

    def warnings(self, name: str | None = None) -> list[str]:
        """One line per batch size where ``name`` (default: the recommended candidate) is
        slower than the engine default or EPLB by more than the tie tolerance
        (`tolerance`), with the loss."""
        return self._losses(name, ties=False)

    def ties(self, name: str | None = None) -> list[str]:
        """One line per batch size where ``name`` is slower than a reference within the
        tie tolerance (`tolerance`): a tie."""
        return self._losses(name, ties=True)

    def headline(self) -> str:
        """One line: the recommendation, its expected step time and its lead over the
        engine default and EPLB, naming the regime."""
        name = self.recommended
        mine = self.expected_step_time(name)
        text = (
            f"recommended: {name}, {mine:.1f} us expected step time over the profile"
            f" ({self.describe_profile()}; {self.basis}, {self.label(max(self.batch_sizes))})"
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
        expected step time (and redundant experts, and the best replica choice's step
        times, when known); the recommended candidate marked."""
        return settings_rows(self.as_settings())

    def as_settings(self) -> dict[str, Any]:
        """A JSON-ready record; every figure's key names its regime and dispatch."""
        sizes = self.batch_sizes
        candidates: dict[str, dict[str, Any]] = {}
        for name, times in self.step_times.items():
            entry: dict[str, Any] = {
                "step_time_us": {self.regime(b): times[b] for b in sizes},
                "expected_step_time_us": self.expected_step_time(name),
                f"{self.rounds_regime} per layer": float(np.mean(self.rounds[name])),
            }
            if self.redundant is not None:
                entry["redundant_experts"] = self.redundant[name]
            if self.best_step_times is not None:
                best = self.best_step_times[name]
                entry["step_time_us_best_replica_choice"] = {
                    regime(b, self.basis): best[b] for b in sizes
                }
            candidates[name] = entry
        record: dict[str, Any] = {
            **({"synthetic": True} if self.synthetic else {}),
            "profile": {str(b): w for b, w in zip(sizes, self.weights, strict=True)},
            "basis": self.basis,
            "note": self.note,
            "cost_model": self.cost_model,
            "dispatch": self.dispatch,
            "dispatch_labels": {str(b): self.label(b) for b in sizes},
            "rounds_regime": self.rounds_regime,
            "recommended": self.recommended,
            "headline": self.headline(),
            "warnings": self.warnings(),
            "tie_tolerance": (
                f"{TIE_STANDARD_ERRORS:g} standard errors of the paired difference of the"
                f" simulated steps, at least {TIE_TOLERANCE:.1%}"
            ),
            "ties": self.ties(),
            "candidates": candidates,
        }
        if self.redundant is not None:
            record["redundant_experts"] = self.redundant[self.recommended]
            record["num_experts"] = self.num_experts
        if self.redundancy_note:
            record["redundancy_note"] = self.redundancy_note
        alternative = self.with_best_choice()
        if alternative is not None:
            record["with_moefast_dispatch"] = alternative
        return record

    def merged(self, other: ServingScores, after: str | None = None) -> ServingScores:
        """These scores with ``other``'s candidates (the same profile, tokens and
        dispatch), inserted after the candidate ``after`` (default: at the end)."""
        names = list(self.step_times)
        at = names.index(after) + 1 if after in names else len(names)
        order = names[:at] + list(other.step_times) + names[at:]

        def join(a: dict | None, b: dict | None) -> dict | None:
            if a is None or b is None:
                return None
            both = {**a, **b}
            return {n: both[n] for n in order}

        return replace(
            self,
            step_times=join(self.step_times, other.step_times) or {},
            rounds=join(self.rounds, other.rounds) or {},
            redundant=join(self.redundant, other.redundant),
            samples=join(self.samples, other.samples),
            best_step_times=join(self.best_step_times, other.best_step_times),
        )


def record_step_times(record: Mapping[str, Any], name: str) -> list[float]:
    """A candidate's step times at each profile size, from a record written by
    `ServingScores.as_settings` (keys naming each figure's regime and dispatch)."""
    basis = record["basis"]
    labels = record.get("dispatch_labels") or {}
    times = record["candidates"][name]["step_time_us"]
    return [times[regime(int(b), basis, labels.get(b, BEST_LABEL))] for b in record["profile"]]


def record_dispatch(record: Mapping[str, Any]) -> str:
    """The words naming the dispatch of a record's figures."""
    labels = record.get("dispatch_labels") or {}
    return str(list(labels.values())[-1]) if labels else BEST_LABEL


def settings_rows(record: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the candidates' table of a record written by
    `ServingScores.as_settings`."""
    basis = record["basis"]
    sizes = [int(b) for b in record["profile"]]
    rounds_key = f"{record.get('rounds_regime', f'{ROUNDS_REGIME}, {basis}')} per layer"
    entries = record["candidates"].values()
    with_redundant = all("redundant_experts" in e for e in entries)
    with_best = record.get("dispatch", "best") != "best" and all(
        "step_time_us_best_replica_choice" in e for e in entries
    )
    header = [
        "candidate",
        *(["redundant"] if with_redundant else []),
        "B = 1 rounds/layer",
        *(f"B = {b} (us)" for b in sizes),
        "expected (us)",
        *(f"B = {b} best choice (us)" for b in sizes if with_best),
    ]
    rows = []
    for name, entry in record["candidates"].items():
        times = record_step_times(record, name)
        best = entry.get("step_time_us_best_replica_choice", {})
        rows.append(
            [
                name + (" *" if name == record["recommended"] else ""),
                *([str(entry["redundant_experts"])] if with_redundant else []),
                f"{entry[rounds_key]:.3f}",
                *(f"{t:.1f}" for t in times),
                f"{entry['expected_step_time_us']:.1f}",
                *(f"{best[regime(b, basis)]:.1f}" for b in sizes if with_best),
            ]
        )
    return header, rows


def dispatch_rounds(
    tables: Sequence[SubsetTable],
    placements: Sequence[Placement],
    dispatch: str,
    seed: int = 0,
    maps: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """float [layers]: each layer's expected expert rounds per token of its table under
    ``dispatch`` (a rule's maps drawn for the layers together, as the engine draws them for
    its file; ``maps``: those maps when the caller has drawn them)."""
    if check_dispatch(dispatch) == "best":
        return np.array([expected_cost(t, p) for t, p in zip(tables, placements, strict=True)])
    if maps is None:
        maps = dispatch_maps(placements, dispatch)
    return np.array(
        [
            float(np.dot(dispatch_costs(t, p, m, seed), t.weights) / t.weights.sum())
            for t, p, m in zip(tables, placements, maps, strict=True)
        ]
    )


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
    dispatch: str = "best",
    redundant: Mapping[str, int] | None = None,
    compare_best: bool = False,
) -> ServingScores:
    """Every candidate (one placement per layer) simulated on ``routing`` (a trace: the same
    tokens in every layer; or one table per layer) at each batch size, and its expected
    rounds on ``tables`` (one per layer), under ``dispatch``; ``compare_best`` also
    simulates each under the best replica choice; ``redundant``: each candidate's redundant
    experts;
    ``progress`` shows the candidates scored on stderr."""
    sizes = tuple(int(b) for b in batch_sizes)
    dispatch = check_dispatch(dispatch)
    times: dict[str, dict[int, float]] = {}
    samples: dict[str, np.ndarray] = {}
    best_times: dict[str, dict[int, float]] = {}
    rounds: dict[str, np.ndarray] = {}
    named = candidates.items()
    first = next(iter(candidates.values()))[0] if candidates else None
    num_gpus = None if first is None else first.num_gpus
    for name, placements in shown_steps(
        named, len(named), "scoring the candidates on the serving profile", progress
    ):
        placements = list(placements)
        # The rule's maps, drawn once for the steps and the rounds.
        maps = None if dispatch == "best" else dispatch_maps(placements, dispatch)
        samples[name] = step_times(
            routing,
            placements,
            sizes,
            cost_model,
            seed=seed,
            steps=steps,
            dispatch=dispatch,
            maps=maps,
        )
        times[name] = {b: float(row.mean()) for b, row in zip(sizes, samples[name], strict=True)}
        if compare_best and dispatch != "best":
            results = simulate(routing, placements, sizes, cost_model, seed=seed, steps=steps)
            best_times[name] = {int(r["batch_size"]): float(r["mean_step_time"]) for r in results}
        rounds[name] = dispatch_rounds(tables, placements, dispatch, seed, maps)
    return ServingScores(
        sizes,
        tuple(float(w) for w in weights),
        times,
        rounds,
        basis,
        note,
        cost_model_note or repr(cost_model),
        dispatch=dispatch,
        num_gpus=num_gpus,
        num_experts=None if first is None else first.num_experts,
        redundant=None if redundant is None else {n: int(redundant[n]) for n in times},
        best_step_times=best_times or None,
        samples=samples,
    )
