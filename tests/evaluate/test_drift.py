"""Drift over windows: a window that cannot be scored is named."""

from __future__ import annotations

import moefast as mf
import numpy as np
import pytest
from moefast.evaluate.drift import drift_windows


def test_an_empty_window_is_named():
    trace = mf.synthetic_trace(40, 8, 2, 1, seed=1)
    model = mf.plan(trace, 2, 4, progress=False, holdout=None)
    weights = np.ones(40)
    weights[20:30] = 0.0  # the third of four windows holds no weight
    trace.weights = weights
    with pytest.raises(ValueError, match=r"window 3 of 4 \(tokens 20 to 29\): .*empty"):
        drift_windows(trace, model, 4)
    assert len(drift_windows(trace, model, 2)) == 2
