"""The fuzz suite: hypothesis properties against the plain references, mutation fuzzing
of every reader and placement format, and inputs changed by other threads.

Two sizes, chosen by the environment variable MOEFAST_FUZZ:
- unset or "ci": a bounded slice (about a minute on two cores), run with the other tests;
- "long": the long run, e.g. `MOEFAST_FUZZ=long pytest tests/fuzz -q -n 0`.
MOEFAST_FUZZ_SEED changes the seed of the mutations (hypothesis draws its own).
The terminal summary counts generated cases and mutated files (with `-n 0`: the worker
processes of pytest-xdist keep their own counts).
"""

from __future__ import annotations

from support.fuzz import COUNTS, LONG


def pytest_terminal_summary(terminalreporter) -> None:
    if COUNTS:
        parts = ", ".join(f"{n:,} {what}" for what, n in sorted(COUNTS.items()))
        terminalreporter.write_line(f"moefast fuzz ({'long' if LONG else 'ci'}): {parts}")
