"""The append side: one writer thread per log does all disk I/O, so concurrent callers share fsyncs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

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
    complete_length,
    list_segments,
    read_last_line,
    segment_name,
    write_all,
)
from raywarden.audit.record import GENESIS_HEAD, canonical_json, chain_head, utc_now
from raywarden.audit.redact import redact
from raywarden.audit.waiters import AsyncWaiter, Item, Outcome, SyncWaiter, call_in_loop, settle
from raywarden.errors import ConfigError, RaywardenError
from raywarden.files import ensure_private_dir, fsync_dir, write_public

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1024 * 1024
_FILE_MODE = 0o600


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


class AuditLog:
    """An append-only, hash-chained, durably written audit log in one folder.

    ``append`` and ``append_async`` return only after the record is fsynced. All writes go through one
    thread per log, which writes every record queued meanwhile with a single write and fsync (group
    commit). Writers in other processes are serialised by ``flock`` on the log's lock file; each writer
    picks up the head of the chain from disk when someone else appended since its last write. Any write
    failure puts the log in a failed state: every later append raises ``AuditUnavailable``.
    """

    def __init__(
        self,
        audit_dir: Path,
        *,
        signing_key: Ed25519PrivateKey,
        checkpoint_every: int,
        checkpoint_seconds: float,
        rotate_bytes: int,
        max_batch: int,
        key_path: Path | None = None,
    ) -> None:
        self.audit_dir = audit_dir
        self._key = signing_key
        self._key_id = audit_key_fingerprint(signing_key)
        # Where the key is read again when another process rotated it (audit/keyrotation.py).
        self._key_path = key_path
        self._checkpoint_every = checkpoint_every
        self._checkpoint_seconds = checkpoint_seconds
        self._rotate_bytes = rotate_bytes
        self._max_batch = max_batch
        self.stats = WriterStats()

        self._cond = threading.Condition()
        self._queue: list[Item] = []
        self._closing = False
        self._closed = False
        self._failure: tuple[str, str | None] | None = None
        self._thread: threading.Thread | None = None

        # Owned by the writer thread once it runs (and by ``_start`` before that).
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
        self._last_checkpoint: Checkpoint | None = None

    # -- public API --------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        audit_dir: Path,
        *,
        signing_key: Ed25519PrivateKey,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 10.0,
        rotate_bytes: int = 64 * 1024 * 1024,
        max_batch: int = 1024,
        key_path: Path | None = None,
    ) -> AuditLog:
        """Open (creating if needed) the log in ``audit_dir`` and start its writer thread.

        ``max_batch=1`` turns group commit off (one fsync per record); it exists for benchmarks.
        ``key_path`` is the signing key's file: when another process rotates the key (``rotate_key``), this
        writer reads the new key from there; without it, a rotation makes this writer fail closed.
        Raises ``AuditUnavailable`` if the folder cannot be written or its tail is inconsistent.
        """
        if checkpoint_every < 1:
            raise ConfigError("checkpoint_every must be at least 1")
        if not checkpoint_seconds > 0:
            raise ConfigError("checkpoint_seconds must be positive")
        if rotate_bytes < 1024:
            raise ConfigError("rotate_bytes must be at least 1024")
        if max_batch < 1:
            raise ConfigError("max_batch must be at least 1")
        self = cls(
            audit_dir,
            signing_key=signing_key,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
            rotate_bytes=rotate_bytes,
            max_batch=max_batch,
            key_path=key_path,
        )
        try:
            self._start()
        except OSError as exc:
            self._release_fds()
            raise self._unavailable(exc) from exc
        except BaseException:
            self._release_fds()
            raise
        return self

    def append(self, record: Mapping[str, Any]) -> int:
        """Redact ``record``, add ``seq``, ``time`` and ``prev``, write and fsync it; return its ``seq``.

        Thread-safe. Blocks until the record is durable; do not call it on an event loop thread.
        """
        waiter = SyncWaiter()
        self._submit(Item(redact(record), waiter))
        return cast(int, waiter.wait())  # record items always resolve to their seq

    async def append_async(self, record: Mapping[str, Any]) -> int:
        """As ``append``, without blocking the event loop; concurrent callers share one fsync."""
        waiter = AsyncWaiter(asyncio.get_running_loop())
        self._submit(Item(redact(record), waiter))
        return cast(int, await waiter.future)

    def checkpoint(self) -> Checkpoint | None:
        """Write a signed checkpoint now if records were added since the last one; return the newest."""
        waiter = SyncWaiter()
        self._submit(Item(None, waiter))
        result = waiter.wait()
        return result if isinstance(result, Checkpoint) else None

    def rotate_key(self, new_key: Ed25519PrivateKey, *, install: Callable[[], None], actor: str) -> KeyRotation:
        """Hand the log over to ``new_key``, under the writers' lock: a ``key.rotate`` record, the old key's last
        checkpoint, then a rotation line signed by both keys (audit/keychain.py). ``install`` puts the new key
        in place of the old one on disk before the lock is released, so the other writers find it there."""
        waiter = SyncWaiter()

        def action() -> KeyRotation:
            return self._rotate_key(new_key, install, actor)

        self._submit(Item(None, waiter, action=action))
        result = waiter.wait()
        if not isinstance(result, KeyRotation):
            raise AuditUnavailable("the key rotation did not complete")
        return result

    @property
    def key_id(self) -> str:
        """The key that signs this log's checkpoints now."""
        return self._key_id

    def close(self) -> None:
        """Write outstanding records and a final checkpoint, stop the writer and release files. Idempotent."""
        with self._cond:
            if self._closing:
                thread = None if self._closed else self._thread
            else:
                self._closing = True
                self._cond.notify_all()
                thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            if not self._closed:
                self._closed = True
                self._release_fds()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- submission ----------------------------------------------------------------------------------------

    def _submit(self, item: Item) -> None:
        with self._cond:
            if self._failure is not None:
                raise AuditUnavailable(self._failure[0], hint=self._failure[1])
            if self._closing:
                raise AuditUnavailable("the audit log is closed", hint="reopen it (restart the gateway)")
            self._queue.append(item)
            self._cond.notify()

    # -- writer thread ---------------------------------------------------------------------------------------

    def _start(self) -> None:
        ensure_private_dir(self.audit_dir)
        self._check_public_key()
        self._lock_fd = os.open(self.audit_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        with self._locked():
            self._sync_head()
        self._thread = threading.Thread(target=self._run, name=f"audit-writer:{self.audit_dir}", daemon=True)
        self._thread.start()

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
                f"{self.audit_dir} belongs to a different audit key than {self._key_id}",
                hint="restore the original audit key, or move the audit dir aside to start a new log",
            )

    def _rotated_to_us(self) -> bool:
        path = self.audit_dir / CHECKPOINTS_NAME
        try:
            line = read_last_line(path, path.stat().st_size)
            return line is not None and newest_key_id(line)[1] == self._key_id
        except (OSError, CheckpointFormatError):
            return False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    timeout = self._checkpoint_timeout()
                    if timeout is not None and timeout <= 0:
                        break
                    self._cond.wait(timeout)
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                final = self._closing and not self._queue
            self.stats.turns += 1
            self._process(batch, final=final)
            if final:
                return

    def _checkpoint_timeout(self) -> float | None:
        if self._dirty_since is None or self._failure is not None:
            return None
        return self._dirty_since + self._checkpoint_seconds - time.monotonic()

    def _process(self, batch: list[Item], *, final: bool) -> None:
        if self._failure is not None:
            self._fail_items(batch)
            return
        try:
            with self._locked():
                self._sync_head()
                records = [item for item in batch if item.record is not None]
                if records:
                    self._write_records(records)
                wants_checkpoint = any(item.record is None and item.action is None for item in batch)
                if wants_checkpoint or final or self._checkpoint_due():
                    self._write_checkpoint()
                for item in batch:
                    if item.action is not None:
                        result = item.action()  # if it raises, the item is failed below with the rest
                        item.done = True
                        item.waiter.resolve(result)
                newest = self._last_checkpoint
                for item in batch:
                    if not item.done:
                        item.done = True
                        item.waiter.resolve(newest)
        except Exception as exc:  # any failure, even a bug, must fail closed rather than strand callers
            self._enter_failed(exc)
            self._fail_items(batch)

    def _locked(self) -> ExclusiveLock:
        return ExclusiveLock(self._lock_fd)

    def _checkpoint_due(self) -> bool:
        if self._dirty_since is None:
            return False
        signed = self._last_cp_size or 0
        if self._next_seq - signed >= self._checkpoint_every:
            return True
        return time.monotonic() - self._dirty_since >= self._checkpoint_seconds

    # -- head of the chain, from disk ------------------------------------------------------------------------

    def _sync_head(self) -> None:
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
                if st.st_ino != self._seg_ino or st.st_size != self._seg_size:
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
        size = self._repair_torn_tail(newest.path)
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
        self._seg_fd = os.open(newest.path, os.O_WRONLY | os.O_APPEND)
        self._seg_ino = os.fstat(self._seg_fd).st_ino
        self._seg_size = size

    def _head_after(self, segment: Segment, size: int) -> tuple[int, bytes] | None:
        line = read_last_line(segment.path, size)
        if line is None:
            return None
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
        self._cp_size = self._repair_torn_tail(path)
        line = read_last_line(path, self._cp_size)
        if line is None:
            self._last_cp_size = None
            return
        try:
            size, key_id, checkpoint = newest_key_id(line)
        except CheckpointFormatError as exc:
            raise self._corrupt(path, f"its last checkpoint is malformed ({exc})") from None
        if key_id != self._key_id:
            self._follow_key(key_id)
        self._last_cp_size = size
        self._last_checkpoint = checkpoint

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
                    self._key, self._key_id = key, key_id
                    return
        raise AuditUnavailable(
            f"the log in {self.audit_dir} is signed by {key_id} now, but this writer holds {self._key_id}",
            hint="the audit key was rotated (`raywarden audit rotate-key`) and the new key is not in the key file: "
            "restore it, then restart the gateway",
        )

    def _rotate_key(self, new_key: Ed25519PrivateKey, install: Callable[[], None], actor: str) -> KeyRotation:
        old_id, new_id = self._key_id, audit_key_fingerprint(new_key)
        if old_id == new_id:
            raise AuditRecordError("the new audit key is the current one")
        record = {"kind": "audit", "event": "key.rotate", "from": old_id, "to": new_id, "actor": actor}
        self._write_records([Item(redact(record), SyncWaiter())])
        self._write_checkpoint()  # the old key's last word covers the rotation record
        rotation = KeyRotation(self._next_seq, self._head, utc_now(), self._key.public_key(), new_key.public_key())
        line = rotation.to_line(self._key, new_key)
        self._append(self._cp_fd, self.audit_dir / CHECKPOINTS_NAME, self._cp_size, line)
        self._cp_size += len(line)
        install()
        self._key, self._key_id = new_key, new_id
        self._last_checkpoint = None
        return rotation

    def _repair_torn_tail(self, path: Path) -> int:
        """Cut a partial last line left by a crash mid-write; it was never acknowledged to anyone."""
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

    # -- writing ---------------------------------------------------------------------------------------------

    def _write_records(self, items: list[Item]) -> None:
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
        self._append(self._seg_fd, segment.path, self._seg_size, data)
        self._seg_size += len(data)
        self._next_seq, self._head = seq, head
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self.stats.records += len(accepted)
        self.stats.batches += 1
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

    def _append(self, fd: int, path: Path, size_before: int, data: bytes) -> None:
        """Write and fsync, or roll the file back to ``size_before`` so no unacknowledged bytes linger."""
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            exc.filename = exc.filename or str(path)
            try:
                os.ftruncate(fd, size_before)
            except OSError:
                log.exception("audit: could not roll back %s after a failed write", path)
            raise

    def _rotate(self) -> Segment:
        if self._seg is not None and (self._last_cp_size or 0) < self._next_seq:
            # Close each segment with a checkpoint, so older segments can be archived and verification
            # can start at a segment boundary (--since-checkpoint).
            self._write_checkpoint()
        path = self.audit_dir / segment_name(self._next_seq)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        fsync_dir(self.audit_dir)  # the new name must survive a crash, or its records vanish with it
        if self._seg_fd >= 0:
            os.close(self._seg_fd)
        if self._seg is not None:
            self.stats.rotations += 1
        self._seg = Segment(self._next_seq, path)
        self._seg_fd = fd
        self._seg_ino = os.fstat(fd).st_ino
        self._seg_size = 0
        return self._seg

    def _write_checkpoint(self) -> None:
        if self._last_cp_size is not None and self._last_cp_size >= self._next_seq:
            # Nothing new to sign (another writer signed this size): clean all the same, or _run never waits.
            self._dirty_since = None
            return
        checkpoint = Checkpoint(size=self._next_seq, head=self._head, time=utc_now(), key_id=self._key_id)
        line = checkpoint.to_line(self._key)
        self._append(self._cp_fd, self.audit_dir / CHECKPOINTS_NAME, self._cp_size, line)
        self._cp_size += len(line)
        self._last_cp_size = checkpoint.size
        self._last_checkpoint = checkpoint
        self._dirty_since = None
        self.stats.checkpoints += 1

    # -- failure ---------------------------------------------------------------------------------------------

    def _unavailable(self, exc: OSError) -> AuditUnavailable:
        where = exc.filename or self.audit_dir
        return AuditUnavailable(f"cannot write {where}: {exc.strerror or exc}")

    def _corrupt(self, path: Path, why: str) -> AuditUnavailable:
        return AuditUnavailable(
            f"{path} is inconsistent: {why}",
            hint="run `raywarden audit verify`; keep the folder as evidence and start a new log elsewhere",
        )

    def _enter_failed(self, exc: BaseException) -> None:
        if isinstance(exc, AuditUnavailable):
            error = exc
        elif isinstance(exc, OSError):
            error = self._unavailable(exc)
        else:
            log.exception("audit: unexpected error in the writer thread")
            error = AuditUnavailable(f"internal error in the audit writer: {exc!r}")
        log.error("audit: %s; refusing all further appends until reopened", error.message)
        with self._cond:
            # Fail closed for good: an fsync error may have dropped pages, so nothing after it is trusted.
            self._failure = (error.message.removeprefix("audit log unavailable: "), error.hint)
            pending, self._queue = self._queue, []
        self._fail_items(pending)

    def _fail_items(self, items: list[Item]) -> None:
        message, hint = self._failure or ("the audit writer failed", None)
        for item in items:
            if not item.done:
                item.done = True
                item.waiter.fail(AuditUnavailable(message, hint=hint))

    def _release_fds(self) -> None:
        for fd in (self._seg_fd, self._cp_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._seg_fd = self._cp_fd = self._lock_fd = -1
