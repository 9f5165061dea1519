"""Optional packages in tests: skipped where they are not installed, except in CI, where
.ci/run installs them and sets MOEFAST_REQUIRE_<NAME>, so that a missing package fails."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(name: str) -> ModuleType:
    """The module ``name``, or a skip (a failure where MOEFAST_REQUIRE_<NAME> is set)."""
    if os.environ.get(f"MOEFAST_REQUIRE_{name.upper()}"):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed")
