"""The log's files as one writer holds them: the lock, the newest segment and the checkpoint file, the head
of the chain read back from disk, and the writes that extend them (audit/writer.py runs them on its thread)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit.checkpoint import Checkpoint, CheckpointFormatError
from raywarden.audit.errors import AuditRecordError, AuditUnavailable
from raywarden.audit.keychain import KeyRotation, newest_key_id
from raywarden.audit.keys import audit_key_fingerprint, audit_public_key_pem, load_audit_key
from raywarden.audit.layout import (
    CHECKPOINTS_NAME,
    LOCK_NAME,
    PUBLIC_KEY_NAME,
    ExclusiveLock,
    Segment,
    complete_tail_line,
    list_segments,
    read_last_line,
    repair_torn_tail,
    segment_name,
    write_all,
)
from raywarden.audit.record import GENESIS_HEAD, canonical_json, chain_head, utc_now
from raywarden.audit.redact import redact
from raywarden.audit.waiters import AsyncWaiter, Item, Outcome, SyncWaiter, call_in_loop, settle
from raywarden.errors import RaywardenError
from raywarden.files import ensure_private_dir, fsync_dir, write_public

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1024 * 1024
_FILE_MODE = 0o600
# Segments are written with O_DSYNC: a write returns once its bytes (and the size that makes them readable)
# are on stable storage, as after fdatasync, in one system call instead of two.
_SEGMENT_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_DSYNC


def staged_key_path(key_path: Path) -> Path:
    """Where a rotation writes the new key before it replaces the old one (audit/keyrotation.py)."""
    return key_path.with_name(key_path.name + ".next")


@dataclass
class WriterStats:
    """Counters kept by the writer thread (read them for tests and benchmarks)."""

    records: int = 0
    batches: int = 0
    turns: int = 0  # times the writer thread woke to work (a batch or a due checkpoint)
    checkpoints: int = 0
    rotations: int = 0


class LogFiles:
    """One writer's hold on the log's folder. Not thread-safe: only the writer thread (and ``open`` before it
    starts) calls it, under the writers' ``flock`` (``locked``) for everything that reads or extends the log."""

    def __init__(
        self,
        audit_dir: Path,
        *,
        signing_key: Ed25519PrivateKey,
        key_path: Path | None,
        checkpoint_every: int,
        checkpoint_seconds: float,
        rotate_bytes: int,
        stats: WriterStats,
        on_append: Callable[[float], None],
    ) -> None:
        self.audit_dir = audit_dir
        self._key = signing_key
        self.key_id = audit_key_fingerprint(signing_key)  # the key that signs the log's checkpoints now
        # Where the key is read again when another process rotated it (audit/keyrotation.py).
        self._key_path = key_path
        self._checkpoint_every = checkpoint_every
        self._checkpoint_seconds = checkpoint_seconds
        self._rotate_bytes = rotate_bytes
        self._stats = stats
        self._on_append = on_append  # told how long each write and fsync took (the gateway's metrics)
        self._lock_fd = -1
        self._cp_fd = -1
        self._cp_ino = 0
        self._cp_size = 0
        self._seg: Segment | None = None
        self._seg_fd = -1
        self._seg_ino = 0
        self._seg_size = 0
        self._next_seq = 0
        self._head = GENESIS_HEAD
        self._last_cp_size: int | None = None
        self._dirty_since: float | None = None
        self.last_checkpoint: Checkpoint | None = None

    def open(self) -> None:
        """Create the folder if needed, check it belongs to our key, open the lock and read the head."""
        ensure_private_dir(self.audit_dir)
        self._check_public_key()
        self._lock_fd = os.open(self.audit_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        with self.locked():
            self.sync_head()

    def seconds_to_checkpoint(self) -> float | None:
        """How long until unsigned records are due a checkpoint by time; None when all are signed."""
        if self._dirty_since is None:
            return None
        return self._dirty_since + self._checkpoint_seconds - time.monotonic()

    def _check_public_key(self) -> None:
        # The folder remembers which key signs its checkpoints; a second key would make half of them fail.
        path = self.audit_dir / PUBLIC_KEY_NAME
        pem = audit_public_key_pem(self._key)
        try:
            existing = path.read_text()
        except FileNotFoundError:
            write_public(path, pem.encode("ascii"))
            return
        if existing != pem and self._rotated_to_us():
            # A rotation to this key was interrupted after its line was written: finish it.
            write_public(path, pem.encode("ascii"))
            return
        if existing != pem:
            raise AuditUnavailable(
                f"{self.audit_dir} belongs to a different audit key than {self.key_id}",
                hint="restore the original audit key, or move the audit dir aside to start a new log",
            )

    def _rotated_to_us(self) -> bool:
        path = self.audit_dir / CHECKPOINTS_NAME
        try:
            line = read_last_line(path, path.stat().st_size)
            return line is not None and newest_key_id(line)[1] == self.key_id
        except (OSError, CheckpointFormatError):
            return False

    def locked(self) -> ExclusiveLock:
        return ExclusiveLock(self._lock_fd)

    def checkpoint_due(self) -> bool:
        if self._dirty_since is None:
            return False
        signed = self._last_cp_size or 0
        if self._next_seq - signed >= self._checkpoint_every:
            return True
        return time.monotonic() - self._dirty_since >= self._checkpoint_seconds

    # -- head of the chain, from disk ------------------------------------------------------------------------

    def sync_head(self) -> None:
        """Make our view of the log match the disk; cheap (two stats) when nobody else wrote."""
        if self._seg is None or self._seg_size >= self._rotate_bytes:
            # Another writer may have rotated; only possible once the segment reached the rotation size.
            self._load_records_head()
        else:
            try:
                st = os.stat(self._seg.path)
            except FileNotFoundError:
                self._load_records_head()
            else:
                # Below the rotation size, nobody can have moved on to a newer segment (see write_records).
                grew = st.st_ino == self._seg_ino and self._seg_size < st.st_size < self._rotate_bytes
                if (st.st_ino != self._seg_ino or st.st_size != self._seg_size) and not (
                    grew and self._follow(st.st_size)
                ):
                    self._load_records_head()
        cp_path = self.audit_dir / CHECKPOINTS_NAME
        try:
            cp_stat: os.stat_result | None = os.stat(cp_path)
        except FileNotFoundError:
            cp_stat = None
        if cp_stat is None or cp_stat.st_ino != self._cp_ino or cp_stat.st_size != self._cp_size:
            self._load_checkpoint_head()
        if self._last_cp_size is not None and self._last_cp_size > self._next_seq:
            raise AuditUnavailable(
                f"the log in {self.audit_dir} has {self._next_seq} records but a signed checkpoint covers "
                f"{self._last_cp_size}: records were removed",
                hint="run `raywarden audit verify`, keep the folder as evidence and start a new log elsewhere",
            )
        if self._dirty_since is None and self._next_seq > (self._last_cp_size or 0):
            self._dirty_since = time.monotonic()

    def _load_records_head(self) -> None:
        if self._seg_fd >= 0:
            os.close(self._seg_fd)
            self._seg_fd = -1
        segments = list_segments(self.audit_dir)
        if not segments:
            self._seg, self._next_seq, self._head = None, 0, GENESIS_HEAD
            return
        newest = segments[-1]
        size = repair_torn_tail(newest.path)
        found = self._head_after(newest, size)
        if found is None:
            # An empty newest segment (crash right after rotating): the chain continues from the one before.
            before = self._head_after(segments[-2], segments[-2].path.stat().st_size) if len(segments) > 1 else None
            next_seq, head = before if before is not None else (0, GENESIS_HEAD)
            if next_seq != newest.first_seq:
                raise self._corrupt(newest.path, f"empty segment should start at seq {next_seq}")
            found = (next_seq, head)
        self._next_seq, self._head = found
        self._seg = newest
        self._seg_fd = os.open(newest.path, _SEGMENT_FLAGS)
        self._seg_ino = os.fstat(self._seg_fd).st_ino
        self._seg_size = size

    def _follow(self, size: int) -> bool:
        """Another writer appended to the segment we hold: continue from its last line, read from the tail
        alone (a few syscalls, where a reload lists the folder and reopens the file). False when the tail is
        torn (a writer died mid-write) or its line is long: then the full reload repairs or finds it."""
        segment = self._seg
        line = None if segment is None else complete_tail_line(segment.path, size)
        if segment is None or line is None:
            return False
        self._next_seq, self._head = self._head_of(segment, line)
        self._seg_size = size
        return True

    def _head_after(self, segment: Segment, size: int) -> tuple[int, bytes] | None:
        line = read_last_line(segment.path, size)
        if line is None:
            return None
        return self._head_of(segment, line)

    def _head_of(self, segment: Segment, line: bytes) -> tuple[int, bytes]:
        try:
            record = json.loads(line)
            seq, prev = record["seq"], bytes.fromhex(record["prev"])
        except (ValueError, KeyError, TypeError):
            raise self._corrupt(segment.path, "its last record does not parse") from None
        if not isinstance(seq, int) or len(prev) != 32:
            raise self._corrupt(segment.path, "its last record has no valid seq and prev")
        return seq + 1, chain_head(prev, line)

    def _load_checkpoint_head(self) -> None:
        if self._cp_fd >= 0:
            os.close(self._cp_fd)
            self._cp_fd = -1
        path = self.audit_dir / CHECKPOINTS_NAME
        created = not path.exists()
        self._cp_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
        if created:
            fsync_dir(self.audit_dir)
        self._cp_ino = os.fstat(self._cp_fd).st_ino
        self._cp_size = repair_torn_tail(path)
        line = read_last_line(path, self._cp_size)
        if line is None:
            self._last_cp_size = None
            return
        try:
            size, key_id, checkpoint = newest_key_id(line)
        except CheckpointFormatError as exc:
            raise self._corrupt(path, f"its last checkpoint is malformed ({exc})") from None
        if key_id != self.key_id:
            self._follow_key(key_id)
        self._last_cp_size = size
        self.last_checkpoint = checkpoint

    def _follow_key(self, key_id: str) -> None:
        """The log is signed by ``key_id`` now (another process rotated the key): read it from the key file, or
        fail closed. Never sign with a retired key: its checkpoints would no longer verify."""
        if self._key_path is not None:
            for candidate in (self._key_path, staged_key_path(self._key_path)):
                try:
                    key = load_audit_key(candidate)
                except RaywardenError:
                    continue
                if audit_key_fingerprint(key) == key_id:
                    if candidate != self._key_path:
                        os.replace(candidate, self._key_path)  # finish a rotation interrupted before its rename
                        fsync_dir(self._key_path.parent)
                    log.warning("audit: the signing key was rotated to %s; following it", key_id)
                    self._key, self.key_id = key, key_id
                    return
        raise AuditUnavailable(
            f"the log in {self.audit_dir} is signed by {key_id} now, but this writer holds {self.key_id}",
            hint="the audit key was rotated (`raywarden audit rotate-key`) and the new key is not in the key file: "
            "restore it, then restart the gateway",
        )

    def rotate_key(self, new_key: Ed25519PrivateKey, install: Callable[[], None], actor: str) -> KeyRotation:
        old_id, new_id = self.key_id, audit_key_fingerprint(new_key)
        if old_id == new_id:
            raise AuditRecordError("the new audit key is the current one")
        record = {"kind": "audit", "event": "key.rotate", "from": old_id, "to": new_id, "actor": actor}
        self.write_records([Item(redact(record), SyncWaiter())])
        self.write_checkpoint()  # the old key's last word covers the rotation record
        rotation = KeyRotation(self._next_seq, self._head, utc_now(), self._key.public_key(), new_key.public_key())
        line = rotation.to_line(self._key, new_key)
        self._append(self._cp_fd, self.audit_dir / CHECKPOINTS_NAME, self._cp_size, line)
        self._cp_size += len(line)
        install()
        self._key, self.key_id = new_key, new_id
        self.last_checkpoint = None
        return rotation

    # -- writing ---------------------------------------------------------------------------------------------

    def write_records(self, items: list[Item]) -> None:
        segment = self._seg
        if segment is None or self._seg_size >= self._rotate_bytes:
            segment = self._rotate()
        stamp = utc_now()  # one time for the batch: its records become durable at the same instant
        seq, head = self._next_seq, self._head
        lines: list[bytes] = []
        accepted: list[tuple[Item, int]] = []
        for item in items:
            # ``item.record`` is redact()'s private copy, so it can take the log's fields in place.
            record = item.record if item.record is not None else {}
            record["seq"], record["time"], record["prev"] = seq, stamp, head.hex()
            line = canonical_json(record)
            if len(line) > MAX_RECORD_BYTES:
                item.done = True
                item.waiter.fail(AuditRecordError(f"audit record of {len(line)} bytes exceeds {MAX_RECORD_BYTES}"))
                continue
            head = chain_head(head, line)
            lines.append(line + b"\n")
            accepted.append((item, seq))
            seq += 1
        if not lines:
            return
        data = b"".join(lines)
        self._append(self._seg_fd, segment.path, self._seg_size, data, synced=True)
        self._seg_size += len(data)
        self._next_seq, self._head = seq, head
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._stats.records += len(accepted)
        self._stats.batches += 1
        self._resolve_records(accepted)

    def _resolve_records(self, accepted: list[tuple[Item, int]]) -> None:
        # One wake-up per event loop for the whole batch rather than one per record.
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for item, seq in accepted:
            item.done = True
            if isinstance(item.waiter, AsyncWaiter):
                by_loop.setdefault(item.waiter.loop, []).append((item.waiter.future, seq, None))
            else:
                item.waiter.resolve(seq)
        for loop, outcomes in by_loop.items():
            call_in_loop(loop, settle, outcomes)

    def _append(self, fd: int, path: Path, size_before: int, data: bytes, *, synced: bool = False) -> None:
        """Write and fsync (``synced``: the file is opened O_DSYNC, so each write returns once it is on stable
        storage, as after fdatasync), or roll the file back to ``size_before`` so no unacknowledged bytes linger."""
        started = time.monotonic()
        try:
            write_all(fd, data)
            if not synced:
                os.fsync(fd)
        except OSError as exc:
            exc.filename = exc.filename or str(path)
            try:
                os.ftruncate(fd, size_before)
            except OSError:
                log.exception("audit: could not roll back %s after a failed write", path)
            raise
        finally:
            self._on_append(time.monotonic() - started)

    def _rotate(self) -> Segment:
        if self._seg is not None and (self._last_cp_size or 0) < self._next_seq:
            # Close each segment with a checkpoint, so older segments can be archived and verification
            # can start at a segment boundary (--since-checkpoint).
            self.write_checkpoint()
        path = self.audit_dir / segment_name(self._next_seq)
        fd = os.open(path, _SEGMENT_FLAGS | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        fsync_dir(self.audit_dir)  # the new name must survive a crash, or its records vanish with it
        if self._seg_fd >= 0:
            os.close(self._seg_fd)
        if self._seg is not None:
            self._stats.rotations += 1
        self._seg = Segment(self._next_seq, path)
        self._seg_fd = fd
        self._seg_ino = os.fstat(fd).st_ino
        self._seg_size = 0
        return self._seg

    def write_checkpoint(self) -> None:
        if self._last_cp_size is not None and self._last_cp_size >= self._next_seq:
            # Nothing new to sign (another writer signed this size): clean all the same, or _run never waits.
            self._dirty_since = None
            return
        checkpoint = Checkpoint(size=self._next_seq, head=self._head, time=utc_now(), key_id=self.key_id)
        line = checkpoint.to_line(self._key)
        self._append(self._cp_fd, self.audit_dir / CHECKPOINTS_NAME, self._cp_size, line)
        self._cp_size += len(line)
        self._last_cp_size = checkpoint.size
        self.last_checkpoint = checkpoint
        self._dirty_since = None
        self._stats.checkpoints += 1

    def _corrupt(self, path: Path, why: str) -> AuditUnavailable:
        return AuditUnavailable(
            f"{path} is inconsistent: {why}",
            hint="run `raywarden audit verify`; keep the folder as evidence and start a new log elsewhere",
        )

    def release(self) -> None:
        for fd in (self._seg_fd, self._cp_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._seg_fd = self._cp_fd = self._lock_fd = -1
