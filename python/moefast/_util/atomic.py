"""Atomic file writes: every file moefast writes goes through `atomic_open`.

The content is written to a temporary file beside the target, flushed to disk, then
renamed over the target (`os.replace`, atomic on POSIX and Windows within one file
system). A crash, Ctrl-C or full disk while writing leaves the old file (or none), never
a truncated one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

# The permissions a plain open() would give a new file (mkstemp makes it 0600). Read once:
# os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_writable(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` as a Path if a file can be written there; ValueError naming it if not.

    For checking an output path before long work: the folder must exist (or be
    creatable: its nearest existing ancestor must be a folder) and ``path`` must not be a
    folder.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file")
    _check_creatable(path, path.parent, what)
    return path


def _check_creatable(path: Path, start: Path, what: str) -> None:
    """ValueError naming ``path`` unless the nearest existing ancestor of ``start`` (or
    ``start`` itself) is a writable folder, so that ``start`` exists or can be made."""
    parent = start
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: folder {parent} is not writable")


def check_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` as a Path if it is a folder or can be created as one; ValueError if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    _check_creatable(path, path, what)
    return path


def check_not_input(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None],
    what: str = "output",
) -> None:
    """ValueError unless ``output`` is none of ``inputs`` (the same file by resolved path
    or by inode, through links) and lies in none of them that are folders: an output must
    never replace what it is made from, nor become an input of the next run."""
    out = Path(output)
    resolved = out.resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if not source.exists():
            continue
        same = resolved == source.resolve() or (out.exists() and os.path.samefile(out, source))
        if same:
            raise ValueError(f"{what} {out} is the input {source}: write it elsewhere")
        if source.is_dir() and resolved.is_relative_to(source.resolve()):
            raise ValueError(
                f"{what} {out} lies in the input folder {source}: it would be read as an"
                " input next time; write it elsewhere"
            )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file object writing ``path`` atomically (``mode`` "w" for text, "wb" for bytes).

    The target appears, complete, when the block ends without an exception; otherwise
    the temporary file is removed and the target is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def save_figure(fig, path: str | os.PathLike, **options) -> None:
    """``fig.savefig`` to ``path`` atomically, in the format its suffix names (png if none)."""
    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=suffix, **options)
