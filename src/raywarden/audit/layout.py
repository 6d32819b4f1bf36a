"""Files in an audit dir: numbered segments of records, the checkpoint file, the lock and the public key."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS_NAME = "checkpoints.jsonl"
LOCK_NAME = ".lock"
PUBLIC_KEY_NAME = "audit-key.pub"
_SEGMENT_RE = re.compile(r"audit-(\d{12,20})\.jsonl")

log = logging.getLogger(__name__)


def segment_name(first_seq: int) -> str:
    """A segment is named after its first sequence number, so names sort in log order."""
    return f"audit-{first_seq:012d}.jsonl"


@dataclass(frozen=True)
class Segment:
    first_seq: int
    path: Path


def list_segments(audit_dir: Path) -> list[Segment]:
    """Segments in log order; files with other names are ignored."""
    found = []
    for entry in os.scandir(audit_dir):
        match = _SEGMENT_RE.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            found.append(Segment(int(match.group(1)), Path(entry.path)))
    return sorted(found, key=lambda s: s.first_seq)


def read_last_line(path: Path, size: int) -> bytes | None:
    """The last complete line (without its newline) in the first ``size`` bytes of ``path``.

    Reads backwards in blocks, so finding the head of a large segment costs one or two reads.
    """
    with path.open("rb") as handle:
        end = size
        # Ignore a torn tail: only bytes up to the last newline are complete lines.
        block = 65536
        tail = b""
        pos = end
        while pos > 0:
            start = max(0, pos - block)
            handle.seek(start)
            tail = handle.read(pos - start) + tail
            pos = start
            last_nl = tail.rfind(b"\n")
            if last_nl < 0:
                continue
            prev_nl = tail.rfind(b"\n", 0, last_nl)
            if prev_nl >= 0 or pos == 0:
                return tail[prev_nl + 1 : last_nl]
        return None


def complete_length(path: Path, size: int) -> int:
    """Length of the prefix of ``path`` made of complete lines (ends at a newline, or 0)."""
    with path.open("rb") as handle:
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            handle.seek(start)
            chunk = handle.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            pos = start
    return 0


def complete_tail_line(path: Path, size: int, window: int = 8192) -> bytes | None:
    """The last line (without its newline) of the first ``size`` bytes of ``path``, when they end with a
    complete line that starts within the last ``window`` bytes; None otherwise (a torn tail, a long line)."""
    start = max(0, size - window)
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    if len(data) != size - start or not data.endswith(b"\n"):
        return None
    before = data.rfind(b"\n", 0, len(data) - 1)
    if before < 0 and start > 0:
        return None
    return data[before + 1 : -1]


def repair_torn_tail(path: Path) -> int:
    """Cut a partial last line left by a crash mid-write (it was never acknowledged to anyone); return the
    length that is left."""
    size = path.stat().st_size
    good = complete_length(path, size)
    if good != size:
        log.warning("audit: removing %d bytes of an incomplete last line from %s", size - good, path)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, good)
            os.fsync(fd)
        finally:
            os.close(fd)
    return good


@contextlib.contextmanager
def shared_lock(audit_dir: Path) -> Iterator[None]:
    """Hold the writers' lock shared, so no batch is half-written while we look; lock-free if read-only."""
    try:
        fd = os.open(audit_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        # A copied or read-only audit dir has no usable lock; nobody is writing to it then.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Snapshot:
    """Sizes of every file at one instant; the log is append-only, so these prefixes never change."""

    segments: list[tuple[Segment, int]]
    checkpoints: bytes


def take_snapshot(audit_dir: Path) -> Snapshot:
    with shared_lock(audit_dir):
        segments = [(s, s.path.stat().st_size) for s in list_segments(audit_dir)]
        try:
            checkpoints = (audit_dir / CHECKPOINTS_NAME).read_bytes()
        except FileNotFoundError:
            checkpoints = b""
    return Snapshot(segments, checkpoints)


def read_prefix(path: Path, size: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class ExclusiveLock:
    """Exclusive ``flock`` on the log's lock file for one batch (serialises writers across processes)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
