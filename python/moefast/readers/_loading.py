"""Loading steps the readers share: JSON documents and array-like values, errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from moefast.readers._errors import malformed


def read_json(path: Path) -> Any:
    """The JSON document in `path`; ValueError naming the file (and line) if it is not one."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise malformed(path, f"cannot read ({err})") from err
    except json.JSONDecodeError as err:
        raise malformed(path, f"not JSON ({err.msg})", err.lineno) from err


def to_numpy(value: Any, path: Path, name: str) -> np.ndarray:
    """A torch tensor, numpy array or nested list as a numpy array."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise malformed(path, f"'{name}' is not an array ({err})") from err
