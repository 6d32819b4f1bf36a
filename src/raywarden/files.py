"""Owner-only files and folders, written atomically so that a crash never leaves half a key behind."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from raywarden.errors import ConfigError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700; tighten an existing folder we own."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def write_atomic(
    path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE, owner: tuple[int, int] | None = None
) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, then rename.

    The temp file is created with ``mode`` from the start, so a secret is never briefly world-readable.
    ``owner`` (uid, gid) hands the file to another user through its descriptor, never through a path.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=PRIVATE_FILE_MODE)


def write_public(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=PUBLIC_FILE_MODE)


def read_private(path: Path) -> bytes:
    """Read a secret, refusing one that group or others can read (as ssh does for keys)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing", hint="run `raywarden init` or check --state-dir") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod 600 {path}",
        )
    return path.read_bytes()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX: the folder entry needs its own fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
