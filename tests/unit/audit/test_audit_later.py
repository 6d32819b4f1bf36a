"""Records nobody waits for (``submit_later``): written with the next batch someone waits for, or on their own
once their short deadline passes, and never lost by a clean close."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit import AuditLog, AuditUnavailable, verify_log
from raywarden.gateway.auditsink import LocalAudit
from tests.unit.audit.audit_support import request_record, segment_lines

pytestmark = pytest.mark.unit


class Done:
    """Collects ``on_done`` calls from the writer thread."""

    def __init__(self) -> None:
        self.calls: list[BaseException | None] = []
        self.event = threading.Event()

    def __call__(self, error: BaseException | None) -> None:
        self.calls.append(error)
        self.event.set()


def test_a_later_record_joins_the_next_awaited_batch(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    # A deadline far away: only the awaited append can have written it.
    log = AuditLog.open(tmp_path / "audit", signing_key=key, later_within_s=600)
    try:
        done = Done()
        log.submit_later({"kind": "outcome", "n": 0}, done)
        assert log.append({"kind": "request", "n": 1}) == 1
        assert done.event.wait(60) and done.calls == [None]
        assert log.stats.batches == 1  # one write and fsync for both
        _, lines = segment_lines(tmp_path / "audit")
        assert [json.loads(line)["n"] for line in lines] == [0, 1]
    finally:
        log.close()


def test_a_later_record_alone_is_written_by_its_deadline(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog.open(tmp_path / "audit", signing_key=key, later_within_s=0.01)
    try:
        done = Done()
        log.submit_later({"kind": "outcome"}, done)
        assert done.event.wait(60) and done.calls == [None]
        _, lines = segment_lines(tmp_path / "audit")
        assert len(lines) == 1
    finally:
        log.close()


def test_close_writes_later_records(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    done = Done()
    with AuditLog.open(tmp_path / "audit", signing_key=key, later_within_s=600) as log:
        for i in range(5):
            log.submit_later(request_record(i), done)
    assert done.calls == [None] * 5
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 5


def test_a_failed_log_refuses_later_records_at_once(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog.open(tmp_path / "audit", signing_key=key)
    log.close()
    with pytest.raises(AuditUnavailable):
        log.submit_later({"kind": "outcome"}, Done())


def test_the_gateway_sink_counts_and_drains_later_records(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog.open(tmp_path / "audit", signing_key=key, later_within_s=0.01)
    sink = LocalAudit(log)

    async def main() -> int:
        for i in range(20):
            sink.append_later(request_record(i))
        await sink.drain()
        return sink.queued

    try:
        assert asyncio.run(main()) == 0
    finally:
        log.close()
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 20


def test_the_gateway_sink_hears_a_failure_of_a_later_record(tiny_tmpfs: Path, key: Ed25519PrivateKey) -> None:
    (tiny_tmpfs / "filler").write_bytes(b"\0" * 32 * 1024)
    heard: list[str] = []
    log = AuditLog.open(tiny_tmpfs / "audit", signing_key=key, later_within_s=0.001)
    sink = LocalAudit(log, on_failed=heard.append)

    async def main() -> None:
        deadline = time.monotonic() + 60
        while not heard and time.monotonic() < deadline:
            sink.append_later({"kind": "outcome", "pad": "x" * 1000})  # until the full disk refuses one
            await asyncio.sleep(0.005)
        await sink.drain()

    try:
        asyncio.run(main())
    finally:
        log.close()
    assert heard and "No space left on device" in heard[0]
    assert log.failed and sink.queued == 0
