"""Several processes, threads and event-loop tasks appending to one log: one gap-free chain."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit import AuditLog, load_or_create_audit_key, verify_log
from raywarden.audit.layout import list_segments
from tests.unit.audit.audit_support import python_env, run_python

pytestmark = pytest.mark.unit

WRITER_SCRIPT = """
import sys
from pathlib import Path
from raywarden.audit import AuditLog, load_or_create_audit_key

root, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
key = load_or_create_audit_key(root / "audit.key")
with AuditLog.open(root / "audit", signing_key=key, checkpoint_every=50, rotate_bytes=8192) as log:
    for i in range(count):
        log.append({"kind": "cluster", "writer": name, "i": i})
"""

PER_WRITER = 150


def test_processes_threads_and_tasks_share_one_chain(tmp_path: Path) -> None:
    key = load_or_create_audit_key(tmp_path / "audit.key")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path), f"proc{n}", str(PER_WRITER)],
            env=python_env(),
            stderr=subprocess.PIPE,
        )
        for n in range(3)
    ]
    log = AuditLog.open(tmp_path / "audit", signing_key=key, checkpoint_every=50, rotate_bytes=8192)

    def thread_writer(name: str) -> None:
        for i in range(PER_WRITER):
            log.append({"kind": "cluster", "writer": name, "i": i})

    async def task_writers() -> None:
        await asyncio.gather(
            *(
                log.append_async({"kind": "request", "writer": f"task{n}", "i": i})
                for n in range(2)
                for i in range(PER_WRITER)
            )
        )

    threads = [threading.Thread(target=thread_writer, args=(f"thread{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    asyncio.run(task_writers())
    for thread in threads:
        thread.join()
    log.close()
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode()

    writers = 3 + 2 + 2
    report = verify_log(tmp_path / "audit", public_key=key.public_key())
    assert report.records == writers * PER_WRITER
    assert report.unsigned_records == 0
    seen: set[tuple[str, int]] = set()
    for segment in list_segments(tmp_path / "audit"):
        for line in segment.path.read_bytes().splitlines():
            record = json.loads(line)
            seen.add((record["writer"], record["i"]))
    assert len(seen) == writers * PER_WRITER  # every record exactly once
    assert len(list_segments(tmp_path / "audit")) > 1  # rotation happened while several processes wrote


def test_two_logs_in_one_process(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    first = AuditLog.open(tmp_path / "audit", signing_key=key)
    second = AuditLog.open(tmp_path / "audit", signing_key=key)
    try:
        assert [first.append({"n": 1}), second.append({"n": 2}), first.append({"n": 3})] == [0, 1, 2]
    finally:
        first.close()
        second.close()
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 3


def test_a_writer_that_died_mid_line_is_repaired_by_the_next(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """A writer killed mid-write leaves a partial line in the segment another writer holds open: that one
    notices on its next batch (the segment grew without ending in a newline), cuts it and continues."""
    first = AuditLog.open(tmp_path / "audit", signing_key=key)
    second = AuditLog.open(tmp_path / "audit", signing_key=key)
    try:
        assert [first.append({"n": 1}), second.append({"n": 2})] == [0, 1]
        segment = list_segments(tmp_path / "audit")[-1].path
        with segment.open("ab") as torn:  # what a SIGKILL between two write() calls leaves
            torn.write(b'{"kind":"request","seq":2,"pr')
        assert first.append({"n": 3}) == 2
        assert second.append({"n": 4}) == 3
    finally:
        first.close()
        second.close()
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 4


def test_cli_process_appends_while_a_long_running_writer_is_open(tmp_path: Path) -> None:
    key = load_or_create_audit_key(tmp_path / "audit.key")
    with AuditLog.open(tmp_path / "audit", signing_key=key) as gateway:
        assert gateway.append({"kind": "request"}) == 0
        result = run_python(WRITER_SCRIPT, str(tmp_path), "cli", "2")
        assert result.returncode == 0, result.stderr
        assert gateway.append({"kind": "request"}) == 3  # picked up the other process's records
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 4


def test_writer_idles_once_another_writer_signed_its_records(tmp_path: Path) -> None:
    """Replays the idle spin: worker A's records signed by worker B left A "dirty" and its thread never waited."""
    key = load_or_create_audit_key(tmp_path / "audit.key")
    first = AuditLog.open(tmp_path / "audit", signing_key=key, checkpoint_seconds=0.2)
    second = AuditLog.open(tmp_path / "audit", signing_key=key, checkpoint_seconds=60)
    try:
        first.append({"kind": "cluster", "writer": "first"})
        second.append({"kind": "cluster", "writer": "second"})
        signed = second.checkpoint()
        assert signed is not None and signed.size == 2
        # Let the first writer's checkpoint deadline pass: it wakes once, finds size 2 signed, and goes back to
        # sleep. Before the fix it woke again at once, thousands of times a second.
        deadline = time.monotonic() + 10
        while first.stats.turns < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        turns = first.stats.turns
        time.sleep(0.5)
        assert first.stats.turns - turns <= 1
        assert first.stats.batches == 1 and first.stats.checkpoints == 0
    finally:
        first.close()
        second.close()
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 2
