"""One advisory file lock around the head's own certificates (gateway and head node).

A writer holds it exclusively while it replaces a key and its certificate (two files, two renames); a reader
that must see them together (the gateway building a new TLS context) holds it shared. The gateway's
renewer holds it exclusively across "is it due? issue, write", so several gateway processes renew once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def holding(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """Hold the lock at ``path`` (created 0600 if missing). Yields False, holding nothing, when
    ``blocking`` is off and someone else holds it in a conflicting mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, flags if blocking else flags | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
