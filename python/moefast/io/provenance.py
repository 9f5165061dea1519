"""Where a trace's routing comes from: the ``source`` mark a native ``.npz`` carries
(`Trace.source`; `moefast.trace.SYNTHETIC` for traces made by `synthetic_trace`), read
beside the trace so that figures computed on generated routing say so."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from moefast.io.readers import load_trace as read_trace
from moefast.trace import PathLike, Trace

#: The longest mark read; a longer one is refused as malformed.
_MAX_SOURCE = 200


def saved_source(path: PathLike) -> str | None:
    """The ``source`` entry of a native ``.npz`` trace (None for other files and for traces
    saved without one). ValueError naming the file for an entry that is not one short
    string."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        if "source.npy" not in archive.namelist():
            return None
        info = archive.getinfo("source.npy")
        if info.file_size > 4 * _MAX_SOURCE + 256:
            raise ValueError(f"{path}: malformed trace: 'source' must be one short string")
    with np.load(path, allow_pickle=False) as arrays:
        try:
            value = arrays["source"]
        except ValueError as err:  # an object array, say
            raise ValueError(f"{path}: malformed trace: 'source' unreadable ({err})") from None
    if value.dtype.kind != "U" or value.size != 1 or len(str(value.item())) > _MAX_SOURCE:
        raise ValueError(
            f"{path}: malformed trace: 'source' must be one short string, got {value!r:.80}"
        )
    return str(value.item())


def load_trace(path: PathLike, format: str | None = None, **options) -> Trace:
    """`moefast.io.readers.load_trace` (same arguments), with the ``source`` mark the file
    carries kept as `Trace.source`."""
    trace = read_trace(path, format, **options)
    source = saved_source(path)
    if source is not None:
        trace.source = source
    return trace
