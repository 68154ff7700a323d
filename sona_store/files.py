"""The one rule for files sona_store creates: owner-only.

The SQLite store (and the -wal and -shm files SQLite gives the same mode),
exported adapters and report files hold recorded or learned data, so each
is created readable and writable by its owner only (0600) whatever the
umask, and a folder sona_store creates for them is 0700. A file or folder
that already exists keeps its mode, except that a file sona_store rewrites
is replaced by a new 0600 one (written beside it, then renamed into place).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from sona_store.errors import FileAccessError

FILE_MODE = 0o600
DIR_MODE = 0o700


def create_private_file(path: str | os.PathLike[str]) -> bool:
    """Create `path` empty and 0600 if nothing is there; True if it did. A
    missing folder or any other problem is left to whoever opens the path
    next (SQLite then reports it in its own words)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)  # exactly 0600, even under an odd umask
    finally:
        os.close(fd)
    return True


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a folder, created (with its parents) 0700 if missing; one the
    system refuses is a FileAccessError naming it."""
    folder = Path(path)
    try:
        if not folder.is_dir():
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise FileAccessError(f"{folder}: cannot create the folder ({_reason(exc)})") from exc
    return folder


def write_private(path: Path, write: Callable[[str], object]) -> None:
    """Write through a temporary 0600 file beside `path` and rename it into
    place, so a reader (or a crash) never sees half a file. What the system
    refuses (no permission, a full disk) is a FileAccessError naming `path`."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise FileAccessError(f"{path}: cannot write it ({_reason(exc)})") from exc
    os.close(fd)  # mkstemp makes it 0600
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FileAccessError(f"{path}: cannot write it ({_reason(exc)})") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


__all__ = ["DIR_MODE", "FILE_MODE", "create_private_file", "private_dir", "write_private"]
