"""Which tokens of a trace train and which test: held-out splits, k folds, bootstrap units.

A placement is judged on tokens it was not planned on. Splits by time keep token order (the
first tokens train, as when a user records today and deploys tomorrow); splits by request keep
each request's tokens on one side. Bootstrap intervals resample whole requests, or blocks of
consecutive tokens where a trace has too few requests to resample.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from moefast._util.checks import check_int, check_number


class Trace(Protocol):
    """What a split reads of a `moefast.Trace`: its token count and request ids."""

    @property
    def num_tokens(self) -> int: ...

    @property
    def request_ids(self) -> np.ndarray | None: ...


SPLIT_BY = ("time", "request")

#: Fewest requests a bootstrap resamples as units; with fewer, it resamples blocks of tokens.
MIN_BOOTSTRAP_REQUESTS = 20


def _check_fraction(test_fraction: float) -> float:
    test_fraction = check_number("test_fraction", test_fraction)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return test_fraction


def _check_by(by: str, trace: Trace) -> None:
    if by not in SPLIT_BY:
        raise ValueError(f"by must be one of {SPLIT_BY}, got {by!r}")
    if by == "request" and trace.request_ids is None:
        raise ValueError(
            "by='request' needs a trace with request_ids (JSONL request_id, SGLang records,"
            " answers of the gpt-oss trace); use by='time'"
        )


def requests_in_order(request_ids: np.ndarray) -> np.ndarray:
    """Distinct request ids in the order of their first token."""
    unique, first = np.unique(request_ids, return_index=True)
    return unique[np.argsort(first)]


def split_positions(
    trace: Trace, test_fraction: float, by: str = "time", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """int positions of the train and test tokens, each in time order."""
    fraction = _check_fraction(test_fraction)
    _check_by(by, trace)
    n = trace.num_tokens
    if by == "time":
        if n < 2:
            raise ValueError(f"a split needs at least 2 tokens, the trace has {n}")
        n_test = min(n - 1, max(1, round(fraction * n)))
        return np.arange(n - n_test), np.arange(n - n_test, n)
    assert trace.request_ids is not None
    requests = requests_in_order(trace.request_ids)
    if len(requests) < 2:
        raise ValueError("by='request' needs at least 2 requests, the trace has 1")
    order = np.random.default_rng(seed).permutation(requests)
    sizes = dict(zip(*np.unique(trace.request_ids, return_counts=True), strict=True))
    test, held = [], 0
    for r in order[:-1]:  # the last request always trains
        if held >= fraction * n:
            break
        test.append(r)
        held += sizes[r]
    mask = np.isin(trace.request_ids, test)
    return np.nonzero(~mask)[0], np.nonzero(mask)[0]


def fold_positions(
    trace: Trace, k: int, by: str = "time", seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, test) position pairs; the test parts partition the tokens."""
    k = check_int("k", k)
    _check_by(by, trace)
    n = trace.num_tokens
    if by == "time":
        if not 2 <= k <= n:
            raise ValueError(f"k must be in [2, tokens = {n}], got {k}")
        fold = np.repeat(np.arange(k), [len(b) for b in np.array_split(np.arange(n), k)])
    else:
        assert trace.request_ids is not None
        requests = requests_in_order(trace.request_ids)
        if not 2 <= k <= len(requests):
            raise ValueError(f"k must be in [2, requests = {len(requests)}], got {k}")
        sizes = dict(zip(*np.unique(trace.request_ids, return_counts=True), strict=True))
        load = np.zeros(k)
        assigned = {}
        # Random order, each request to the fold with the fewest tokens so far: equal-sized
        # folds without always pairing the same requests.
        for r in np.random.default_rng(seed).permutation(requests):
            f = int(np.argmin(load))
            assigned[r] = f
            load[f] += sizes[r]
        fold = np.array([assigned[r] for r in trace.request_ids.tolist()])
    return [(np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]) for f in range(k)]


def bootstrap_units(trace: Trace) -> tuple[np.ndarray, str]:
    """int [tokens]: the unit each token is resampled with, and what the units are.

    Whole requests when the trace has at least MIN_BOOTSTRAP_REQUESTS of them; otherwise blocks
    of about n^(1/3) consecutive tokens of one request (routing of neighbouring tokens is
    correlated, so single tokens would give intervals that are too narrow)."""
    n = trace.num_tokens
    ids = trace.request_ids
    if ids is not None and len(np.unique(ids)) >= MIN_BOOTSTRAP_REQUESTS:
        _, units = np.unique(ids, return_inverse=True)
        return units.astype(np.int64), f"{units.max() + 1} requests"
    length = max(1, round(n ** (1 / 3)))
    if ids is None:
        units = np.arange(n) // length
    else:
        # Position of each token within its request, then blocks within requests.
        order = np.argsort(ids, kind="stable")
        within = np.empty(n, dtype=np.int64)
        sorted_ids = ids[order]
        starts = np.r_[0, np.nonzero(sorted_ids[1:] != sorted_ids[:-1])[0] + 1]
        run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
        within[order] = np.arange(n) - run_start
        keys = np.stack([ids, within // length], axis=1)
        _, units = np.unique(keys, axis=0, return_inverse=True)
        units = units.reshape(-1)
    return units.astype(np.int64), f"{units.max() + 1} blocks of {length} consecutive tokens"
