"""Checks, atomic file writes and progress: what every layer of the package uses."""
