"""Placements scored: held-out splits and bootstrap intervals, the comparison with the
baselines, estimator selection, learning curves, drift and slot sweeps."""
