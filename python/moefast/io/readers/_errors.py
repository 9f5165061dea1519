"""The readers' errors: a missing optional dependency; malformed input named by file and line."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise ImportError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{feature} needs the Python package '{module}', which is not installed:"
            f" run `pip install 'moefast[torch]'` (or `pip install {module}`)"
        ) from err


def malformed(path: Path, problem: str, line: int | None = None) -> ValueError:
    """A ValueError saying what is wrong with ``path`` (at ``line`` when given)."""
    where = f"{path}, line {line}" if line is not None else f"{path}"
    return ValueError(f"{where}: {problem}")
