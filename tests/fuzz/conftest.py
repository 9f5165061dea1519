"""The fuzz suite: hypothesis properties against the plain references, mutation fuzzing
of every reader and placement format, and inputs changed by other threads.

Two sizes, chosen by the environment variable MOEFAST_FUZZ:
- unset or "ci": a bounded slice (about a minute on two cores), run with the other tests;
- "long": the long run (README), e.g. `MOEFAST_FUZZ=long pytest tests/fuzz -q -p no:randomly`.
MOEFAST_FUZZ_SEED changes the seed of the mutations (hypothesis draws its own).
The terminal summary counts generated cases and mutated files.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings

# The references and strategies of the parent folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LONG = os.environ.get("MOEFAST_FUZZ", "ci") == "long"

settings.register_profile(
    "fuzz-ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz-long",
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("fuzz-long" if LONG else "fuzz-ci")

#: Mutated files per seed file and mutation kind.
MUTATIONS = 400 if LONG else 12
#: Rounds of the threads that change inputs during calls.
THREAD_ROUNDS = 200 if LONG else 6
SEED = int(os.environ.get("MOEFAST_FUZZ_SEED", "0"))

#: What the suite ran: generated cases, mutated files, concurrent calls.
COUNTS: Counter = Counter()


def pytest_terminal_summary(terminalreporter) -> None:
    if COUNTS:
        parts = ", ".join(f"{n:,} {what}" for what, n in sorted(COUNTS.items()))
        terminalreporter.write_line(f"moefast fuzz ({'long' if LONG else 'ci'}): {parts}")
