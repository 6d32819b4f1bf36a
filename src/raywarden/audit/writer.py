"""The append side: one writer thread per log does all disk I/O, so concurrent callers share fsyncs.

Records nobody waits for (``submit_later``: the gateway's outcome records) do not wake the writer for a turn
of their own: they join the batch of the next record someone waits for, or are written ``later_within_s``
after the first of them was submitted. Under load that halves the fsyncs and the writer's wake-ups per request;
with one client, a request's outcome shares the fsync of the next request's decision record.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit.checkpoint import Checkpoint
from raywarden.audit.errors import AuditUnavailable
from raywarden.audit.keychain import KeyRotation
from raywarden.audit.logfiles import LogFiles, WriterStats
from raywarden.audit.redact import redact
from raywarden.audit.waiters import AsyncWaiter, CallbackWaiter, Item, SyncWaiter
from raywarden.errors import ConfigError

log = logging.getLogger(__name__)
# How long a record submitted with ``submit_later`` may wait for a batch to join before it gets one of its own.
LATER_WITHIN_S = 0.005


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
        later_within_s: float = LATER_WITHIN_S,
    ) -> None:
        self.audit_dir = audit_dir
        self._max_batch = max_batch
        self._later_within_s = later_within_s
        self.stats = WriterStats()
        # Touched only by the writer thread once it runs (and by ``_start`` before that).
        self._files = LogFiles(
            audit_dir,
            signing_key=signing_key,
            key_path=key_path,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
            rotate_bytes=rotate_bytes,
            stats=self.stats,
            on_append=self._append_took,
        )

        self._cond = threading.Condition()
        self._queue: list[Item] = []
        # A caller waits on a queued record: the writer takes its turn now.
        self._urgent = False
        # When the oldest queued record that nobody waits for must be written at the latest.
        self._later_due: float | None = None
        self._closing = False
        self._closed = False
        self._failure: tuple[str, str | None] | None = None
        self._thread: threading.Thread | None = None

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
        later_within_s: float = LATER_WITHIN_S,
    ) -> AuditLog:
        """Open (creating if needed) the log in ``audit_dir`` and start its writer thread.

        ``max_batch=1`` turns group commit off (one fsync per record); it exists for benchmarks.
        ``later_within_s`` bounds how long a ``submit_later`` record waits for a batch to join.
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
        if later_within_s < 0:
            raise ConfigError("later_within_s must not be negative")
        self = cls(
            audit_dir,
            signing_key=signing_key,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
            rotate_bytes=rotate_bytes,
            max_batch=max_batch,
            key_path=key_path,
            later_within_s=later_within_s,
        )
        try:
            self._start()
        except OSError as exc:
            self._files.release()
            raise self._unavailable(exc) from exc
        except BaseException:
            self._files.release()
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

    def submit_later(self, record: Mapping[str, Any], on_done: Callable[[BaseException | None], None]) -> None:
        """Submit ``record`` without waiting: it is written with the next batch someone waits for, or within
        ``later_within_s``. ``on_done`` runs on the writer thread, with None once the record is durable or with
        the error; it must be quick and must not raise. Raises AuditUnavailable at once if the log failed."""
        self._submit(Item(redact(record), CallbackWaiter(on_done)), urgent=False)

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
            return self._files.rotate_key(new_key, install, actor)

        self._submit(Item(None, waiter, action=action))
        result = waiter.wait()
        if not isinstance(result, KeyRotation):
            raise AuditUnavailable("the key rotation did not complete")
        return result

    @property
    def key_id(self) -> str:
        """The key that signs this log's checkpoints now."""
        return self._files.key_id

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
                self._files.release()

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

    def _submit(self, item: Item, *, urgent: bool = True) -> None:
        with self._cond:
            if self._failure is not None:
                raise AuditUnavailable(self._failure[0], hint=self._failure[1])
            if self._closing:
                raise AuditUnavailable("the audit log is closed", hint="reopen it (restart the gateway)")
            self._queue.append(item)
            if urgent:
                self._urgent = True
                self._cond.notify()
            elif self._later_due is None:
                # The writer may be asleep with no deadline: it sets its next wake-up to this record's.
                self._later_due = time.monotonic() + self._later_within_s
                self._cond.notify()

    def _append_took(self, seconds: float) -> None:
        """Called on the writer thread after each write and fsync, or its failure, with the time it took.
        Nothing to do here; the gateway's log measures it (gateway/auditwriter.py)."""

    # -- writer thread ---------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._files.open()
        self._thread = threading.Thread(target=self._run, name=f"audit-writer:{self.audit_dir}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._urgent and not self._closing:
                    timeout = self._wait_timeout()
                    if timeout is not None and timeout <= 0:
                        break
                    self._cond.wait(timeout)
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                # What a full batch left behind is written on the next turn, without waiting.
                self._urgent = bool(self._queue)
                self._later_due = None
                final = self._closing and not self._queue
            self.stats.turns += 1
            self._process(batch, final=final)
            if final:
                return

    def _wait_timeout(self) -> float | None:
        """Seconds until the writer has something to do unasked: a due checkpoint or a record's deadline."""
        timeout = None if self._failure is not None else self._files.seconds_to_checkpoint()
        if self._later_due is not None:
            later = self._later_due - time.monotonic()
            timeout = later if timeout is None else min(timeout, later)
        return timeout

    def _process(self, batch: list[Item], *, final: bool) -> None:
        if self._failure is not None:
            self._fail_items(batch)
            return
        try:
            with self._files.locked():
                self._files.sync_head()
                records = [item for item in batch if item.record is not None]
                if records:
                    self._files.write_records(records)
                wants_checkpoint = any(item.record is None and item.action is None for item in batch)
                if wants_checkpoint or final or self._files.checkpoint_due():
                    self._files.write_checkpoint()
                for item in batch:
                    if item.action is not None:
                        result = item.action()  # if it raises, the item is failed below with the rest
                        item.done = True
                        item.waiter.resolve(result)
                newest = self._files.last_checkpoint
                for item in batch:
                    if not item.done:
                        item.done = True
                        item.waiter.resolve(newest)
        except Exception as exc:  # any failure, even a bug, must fail closed rather than strand callers
            self._enter_failed(exc)
            self._fail_items(batch)

    # -- failure ---------------------------------------------------------------------------------------------

    def _unavailable(self, exc: OSError) -> AuditUnavailable:
        where = exc.filename or self.audit_dir
        return AuditUnavailable(f"cannot write {where}: {exc.strerror or exc}")

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
