"""Sizes of the fuzz suite (tests/fuzz), chosen by the environment variable MOEFAST_FUZZ:
unset or "ci", a bounded slice run with the other tests; "long", the long run.
MOEFAST_FUZZ_SEED changes the seed of the mutations (hypothesis draws its own)."""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

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
#: Cases of values at and beyond the limits, run in capped subprocesses.
LIMIT_CASES = 300 if LONG else 16
#: Command lines with hostile output paths.
PATH_CASES = 120 if LONG else 8
#: Address-space cap of those subprocesses: an allocation beyond it aborts or raises.
CAP_BYTES = 5 << 30
