"""Helpers the readers share: optional-dependency imports and error messages that name the file."""

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
    where = f"{path}, line {line}" if line is not None else f"{path}"
    return ValueError(f"{where}: {problem}")


def read_json(path: Path):
    """The JSON document in `path`; ValueError naming the file (and line) if it is not one."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise malformed(path, f"cannot read ({err})") from err
    except json.JSONDecodeError as err:
        raise malformed(path, f"not JSON ({err.msg})", err.lineno) from err


def to_numpy(value, path: Path, name: str):
    """A torch tensor, numpy array or nested list as a numpy array."""
    import numpy as np

    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise malformed(path, f"'{name}' is not an array ({err})") from err
