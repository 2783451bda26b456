"""Writing files without losing any: atomic replacement under unpredictable temporary names, and output
folders proven writable before long work starts.

Every file this package writes (checkpoints, mask caches, results JSON, heatmap grids, demo tables) goes
through :func:`atomic_write` or :func:`temp_path`: the new content is written to a fresh file created with
``mkstemp`` (``O_CREAT | O_EXCL``, a random name, mode 0600) in the target's own folder, flushed to disk and
renamed over the target with ``os.replace``. A planted symlink at a guessable temporary name cannot redirect the
write, a symlink at the target is replaced rather than followed, and an interrupted write leaves the old file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_text", "temp_path", "check_writable", "stale_temps", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def temp_path(path: str | os.PathLike) -> Iterator[Path]:
    """A new, empty temporary file beside ``path`` (yielded as its path); on success it replaces ``path``
    atomically, on any exception it is removed. For writers that need a path (``np.memmap``, PIL)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(f)`` on a fresh temporary binary file beside ``path``, then replace ``path`` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = True) -> Path:
    """Create the folder (``folder=True``) or the parent folder of the file ``path`` and prove that a file can be
    created there, before any long work; ``ValueError`` naming ``what`` otherwise. A file path that exists must be
    a regular file (or a symlink, which the atomic write will replace)."""
    path = Path(path)
    where = path if folder else path.parent
    if not folder and path.is_dir():
        raise ValueError(f"{what}: {path} is a folder, expected a file name")
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{what}: {where} is not a writable folder ({exc.strerror or exc})") from None
    return path


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporary files that an interrupted :func:`atomic_write` of ``path`` left beside it (a kill cannot run the
    clean-up)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = _temp_prefix(path)
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(TEMP_SUFFIX)
                  and p.is_file() and not p.is_symlink())
