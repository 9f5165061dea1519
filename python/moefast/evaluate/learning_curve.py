"""How much trace is enough: held-out gain against the number of training tokens.

The placement is planned on the first 1/8, 1/4, 1/2 and all of the train part (a shorter
recording) and always scored on the same held-out tokens, so the points are paired. The
verdict: "still rising" when the last doubling of training tokens raised the held-out gain
by at least `RISING_POINTS` (recording more would likely pay), "flat" otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moefast.evaluate.comparison import BASELINES
from moefast.evaluate.heldout import Planner, baseline_placements
from moefast.evaluate.scoring import UnitSums
from moefast.splits import bootstrap_units
from moefast.trace import Trace

FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)
#: Rise in held-out gain (0.01 = one percentage point) over the last doubling that counts
#: as "still rising".
RISING_POINTS = 0.01
RULE = (
    f'"still rising" when planning on all of the train part instead of its first half raises'
    f" the held-out gain by at least {100 * RISING_POINTS:.0f} percentage point; otherwise"
    ' "flat"'
)


@dataclass
class LearningCurve:
    """Held-out gain (and bootstrap 95% interval) at each amount of training tokens."""

    train_tokens: list[int]
    gains: list[float]
    intervals: list[tuple[float, float] | None]
    last_step: float  # gain(all) - gain(first half)
    last_step_interval: tuple[float, float] | None  # paired bootstrap 95% interval
    note: str

    @property
    def verdict(self) -> str:
        return "still rising" if self.last_step >= RISING_POINTS else "flat"

    def sentence(self) -> str:
        text = (
            f"Held-out gain {self.verdict}: the last doubling of training tokens"
            f" ({self.train_tokens[-2]} -> {self.train_tokens[-1]}) changed it by"
            f" {100 * self.last_step:+.1f} points"
        )
        if self.last_step_interval is not None:
            low, high = self.last_step_interval
            text += f" (paired 95% interval {100 * low:+.1f} to {100 * high:+.1f})"
        verdict = (
            "recording more routing would likely pay."
            if self.verdict == "still rising"
            else "recording more would likely not change the plan much."
        )
        return f"{text}; {verdict} Rule: {RULE}."


def learning_curve(
    trace: Trace,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    planner: Planner,
    num_gpus: int,
    slots_per_gpu: int,
    main: str = "greedy",
    seed: int = 0,
) -> LearningCurve:
    """Held-out gain of ``planner`` on ``trace``'s test positions of each fold (train, test),
    planned on the first FRACTIONS of each fold's train positions; folds are pooled."""
    units, what = bootstrap_units(trace)
    count = int(units.max()) + 1
    methods = [main, *(m for m in BASELINES if m != main)]
    curves = [UnitSums(count, trace.num_layers, methods, num_gpus) for _ in FRACTIONS]
    sizes = np.zeros(len(FRACTIONS), dtype=np.int64)
    for train_at, test_at in folds:
        test = trace.select_tokens(test_at)
        for i, fraction in enumerate(FRACTIONS):
            used = train_at[: max(1, round(fraction * len(train_at)))]
            tables = trace.select_tokens(used).tables()
            placed = baseline_placements(tables, num_gpus, slots_per_gpu, methods[1:], seed)
            placed[main] = planner(tables)
            curves[i].add(test, units[test_at], placed)
            sizes[i] += len(used)
    gains = []
    for c in curves:
        costs = c.costs()
        best = np.min([costs[m] for m in methods[1:]], axis=0).sum()
        gains.append(float((best - costs[main].sum()) / best))
    intervals = [c.gain_interval(main, seed=seed) for c in curves]
    half, full = curves[-2].gain_samples(main, seed=seed), curves[-1].gain_samples(main, seed=seed)
    step_interval = None
    if half is not None and full is not None:
        low, high = np.percentile(full - half, [2.5, 97.5])
        step_interval = (float(low), float(high))
    per_fold = [int(s // len(folds)) for s in sizes]
    per = f"mean training tokens of {len(folds)} folds" if len(folds) > 1 else "one split"
    note = f"{per}; intervals resample {what}"
    return LearningCurve(per_fold, gains, intervals, gains[-1] - gains[-2], step_interval, note)
