"""Loading steps the readers share: JSON documents, array-like values and expert-id lists,
errors naming the file (and line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from moefast.io.readers._errors import malformed
from moefast.trace import MAX_EXPERTS


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: the json module keeps the last of two."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """The JSON value in ``text`` read from ``path`` (at ``line``): ValueError naming them
    for anything that is not strict JSON (NaN, Infinity), an object repeating a key, or
    nesting too deep to read."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        at = line if line is not None else err.lineno
        raise malformed(path, f"not JSON ({err.msg})", at) from err
    except _DuplicateKey as err:
        raise malformed(path, f"key {err.key!r} appears twice in one object", line) from err
    except ValueError as err:  # from _no_constant
        raise malformed(path, f"not JSON ({err})", line) from err
    except RecursionError as err:
        raise malformed(path, "not JSON this program can read (nested too deeply)", line) from err


def read_json(path: Path) -> Any:
    """The JSON document in `path`; ValueError naming the file (and line) if it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise malformed(path, f"cannot read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise malformed(path, f"not UTF-8 text (byte {err.start}: {err.reason})") from err
    return parse_json(text, path)


def to_numpy(value: Any, path: Path, name: str) -> np.ndarray:
    """A torch tensor, numpy array or nested list as a numpy array."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        raise malformed(path, f"'{name}' is not an array ({err})") from err


def int_array(value: Any, path: Path, name: str) -> np.ndarray:
    """An array of integers (any integer dtype) as int64; floats, bools and strings are
    refused, not cast (1.5 is not expert 1)."""
    array = to_numpy(value, path, name)
    if array.size and array.dtype.kind not in "iu":
        raise malformed(path, f"'{name}' must hold integers, got {array.dtype} values")
    if array.dtype.kind == "u" and array.size and int(array.max()) > 2**63 - 1:
        raise malformed(path, f"'{name}' holds {int(array.max())}, out of range")
    return array.astype(np.int64)


def expert_ids(value: Any, path: Path, name: str, line: int | None = None) -> list[int]:
    """A token's expert ids: a non-empty list of distinct ints in [0, MAX_EXPERTS)."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(e, int) and not isinstance(e, bool) for e in value)
    ):
        raise malformed(
            path, f"{name} must be a non-empty list of integer ids, got {value!r}", line
        )
    low, high = min(value), max(value)
    if low < 0 or high >= MAX_EXPERTS:
        bad = low if low < 0 else high
        raise malformed(path, f"expert id {bad} out of range [0, {MAX_EXPERTS}) in {name}", line)
    if len(set(value)) != len(value):
        raise malformed(path, f"an expert appears twice in {name}: {value}", line)
    return value


# Deflate expands at most ~1032 times: an entry claiming more is not a real array.
_MAX_EXPANSION = 1100


def _read_array(handle: Any, size: int, path: Path, name: str) -> np.ndarray:
    """One ``.npy`` array from ``handle`` (``size`` bytes), its header checked against the
    size before numpy allocates anything: a corrupt header claiming a huge shape is an
    error, not gigabytes of memory."""
    from numpy.lib import format as npy

    what = f"'{name}'" if name else "the array"
    try:
        version = npy.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = npy.read_array_header_2_0(handle)
        if dtype.hasobject:
            raise ValueError("it holds Python objects")
        count = 1
        for n in shape:
            count *= n
        header = handle.tell() if hasattr(handle, "tell") else 0
        if count * dtype.itemsize > size - header:
            raise ValueError(
                f"its header claims {count:,} values of {dtype.itemsize} bytes in {size:,} bytes"
            )
        array = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype, count=count)
        array = array.reshape(shape, order="F" if fortran else "C").copy()
    except Exception as err:  # numpy and zlib raise many types for a corrupt file
        raise malformed(path, f"{what} is not a readable .npy array ({err})") from None
    return array


def load_npy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file; ValueError naming the file for anything else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            return _read_array(handle, size, path, "")
    except OSError as err:
        raise malformed(path, f"cannot read ({err.strerror or err})") from err


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file by name; ValueError naming the file for a corrupt or
    foreign file."""
    import zipfile

    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[: -len(".npy")]
                if info.file_size > _MAX_EXPANSION * info.compress_size + (1 << 16):
                    raise malformed(path, f"'{name}' claims {info.file_size:,} bytes uncompressed")
                with archive.open(info) as handle:
                    arrays[name] = _read_array(handle, info.file_size, path, name)
    except OSError as err:
        raise malformed(path, f"cannot read ({err.strerror or err})") from err
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise malformed(path, f"not a readable .npz file ({err})") from None
    except Exception as err:  # zlib.error, NotImplementedError (compression), ...
        raise malformed(path, f"not a readable .npz file ({type(err).__name__}: {err})") from None
    return arrays
