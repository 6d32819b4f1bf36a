"""Appending: fields added, durability on return, checkpoints, rotation, group commit, reopening."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit import AuditLog, AuditRecordError, AuditUnavailable, verify_log
from raywarden.audit.layout import list_segments
from raywarden.audit.logfiles import MAX_RECORD_BYTES
from tests.unit.audit.audit_support import MakeLog, checkpoint_lines, request_record, segment_lines

pytestmark = pytest.mark.unit


def test_append_adds_seq_time_prev_and_is_on_disk_when_it_returns(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog.open(tmp_path / "audit", signing_key=key)
    try:
        assert log.append({"kind": "cluster", "event": "up"}) == 0
        assert log.append({"kind": "cluster", "event": "down"}) == 1
        # Read through a separate descriptor: the bytes are in the file, not in a buffer of ours.
        _, lines = segment_lines(tmp_path / "audit")
        first, second = (json.loads(line) for line in lines)
        assert first["seq"] == 0 and second["seq"] == 1 and first["event"] == "up"
        assert first["time"].endswith("Z") and len(first["time"]) == len("2025-01-01T00:00:00.000000Z")
        assert first["prev"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        assert lines[0] == json.dumps(first, sort_keys=True, separators=(",", ":")).encode()
    finally:
        log.close()


def test_files_are_owner_only(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "audit", signing_key=key) as log:
        log.append({"kind": "x"})
    assert stat.S_IMODE((tmp_path / "audit").stat().st_mode) == 0o700
    for path in (tmp_path / "audit").iterdir():
        if path.suffix == ".jsonl" or path.name == ".lock":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_secrets_never_reach_the_file(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "audit", signing_key=key) as log:
        log.append({"kind": "request", "authorization": "Bearer hunter2", "note": "token eyJa.eyJb.c"})
    data = list_segments(tmp_path / "audit")[0].path.read_bytes()
    assert b"hunter2" not in data and b"eyJa" not in data


def test_checkpoint_every_n_records_and_on_close(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog.open(tmp_path / "audit", signing_key=key, checkpoint_every=5)
    for i in range(12):
        log.append(request_record(i))
    sizes = [json.loads(line)["checkpoint"]["size"] for line in checkpoint_lines(tmp_path / "audit")]
    assert sizes == [5, 10]
    log.close()
    log.close()  # idempotent
    sizes = [json.loads(line)["checkpoint"]["size"] for line in checkpoint_lines(tmp_path / "audit")]
    assert sizes == [5, 10, 12]
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).last_checkpoint_size == 12


def test_checkpoint_after_t_seconds_without_more_appends(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "audit", signing_key=key, checkpoint_seconds=0.05) as log:
        log.append({"kind": "x"})
        deadline = time.monotonic() + 5
        while not checkpoint_lines(tmp_path / "audit") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(checkpoint_lines(tmp_path / "audit")) == 1


def test_forced_checkpoint(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "audit", signing_key=key) as log:
        log.append({"kind": "x"})
        checkpoint = log.checkpoint()
        assert checkpoint is not None and checkpoint.size == 1
        assert log.checkpoint() == checkpoint  # nothing new: no second checkpoint of the same size
    assert len(checkpoint_lines(tmp_path / "audit")) == 1


def test_empty_log_closes_with_a_size_zero_checkpoint(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    AuditLog.open(tmp_path / "audit", signing_key=key).close()
    report = verify_log(tmp_path / "audit", public_key=key.public_key())
    assert (report.records, report.checkpoints, report.last_checkpoint_size) == (0, 1, 0)


def test_rotation_keeps_the_chain_and_checkpoints_each_segment(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    audit_dir = make_log(60, checkpoint_every=1000, rotate_bytes=2048)
    segments = list_segments(audit_dir)
    assert len(segments) > 3
    sizes = {json.loads(line)["checkpoint"]["size"] for line in checkpoint_lines(audit_dir)}
    assert {s.first_seq for s in segments[1:]} <= sizes  # every closed segment is signed
    report = verify_log(audit_dir, public_key=key.public_key())
    assert report.records == 60 and report.files == len(segments)
    # Older segments can be archived; verification then starts at a segment boundary.
    segments[0].path.unlink()
    assert verify_log(audit_dir, public_key=key.public_key(), since_checkpoint=segments[1].first_seq).records == 60


def test_async_appends_share_fsyncs(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog.open(tmp_path / "audit", signing_key=key)

    async def main() -> list[int]:
        return await asyncio.gather(*(log.append_async(request_record(i)) for i in range(500)))

    try:
        seqs = asyncio.run(main())
    finally:
        log.close()
    assert sorted(seqs) == list(range(500))
    assert log.stats.records == 500
    assert log.stats.batches < 100  # group commit: far fewer write+fsync rounds than records
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 500


def test_reopen_continues_the_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    for round_ in range(3):
        with AuditLog.open(tmp_path / "audit", signing_key=key) as log:
            assert log.append({"kind": "x", "round": round_}) == round_
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 3


def test_reopen_removes_a_torn_last_line(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "audit", signing_key=key) as log:
        log.append({"kind": "x"})
    path = list_segments(tmp_path / "audit")[0].path
    with path.open("ab") as handle:
        handle.write(b'{"kind":"half a rec')  # a crash in the middle of a write
    with AuditLog.open(tmp_path / "audit", signing_key=key) as log:
        assert log.append({"kind": "y"}) == 1
    assert verify_log(tmp_path / "audit", public_key=key.public_key()).records == 2


def test_log_of_another_key_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    AuditLog.open(tmp_path / "audit", signing_key=key).close()
    with pytest.raises(AuditUnavailable, match="different audit key"):
        AuditLog.open(tmp_path / "audit", signing_key=Ed25519PrivateKey.generate())


def test_append_after_close_fails_closed(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog.open(tmp_path / "audit", signing_key=key)
    log.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        log.append({"kind": "x"})


def test_bad_records_are_refused_without_breaking_the_log(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "audit", signing_key=key) as log:
        with pytest.raises(AuditRecordError):
            log.append({"seq": 5})
        with pytest.raises(AuditRecordError, match="exceeds"):
            log.append({"blob": "x" * MAX_RECORD_BYTES})
        assert log.append({"kind": "fine"}) == 0
        assert not log.failed


def test_truncated_log_refuses_to_continue(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "audit", signing_key=key) as log:
        for i in range(3):
            log.append({"i": i})
    path, lines = segment_lines(tmp_path / "audit")
    path.write_bytes(lines[0] + b"\n")  # records 1 and 2 removed, though a checkpoint covers them
    with pytest.raises(AuditUnavailable, match="records were removed"):
        AuditLog.open(tmp_path / "audit", signing_key=key)


@pytest.mark.parametrize(
    ("option", "value"),
    [("checkpoint_every", 0), ("checkpoint_seconds", 0.0), ("rotate_bytes", 10), ("max_batch", 0)],
)
def test_invalid_settings(tmp_path: Path, key: Ed25519PrivateKey, option: str, value: float) -> None:
    from raywarden.errors import ConfigError

    with pytest.raises(ConfigError):
        AuditLog.open(tmp_path / "audit", signing_key=key, **{option: value})  # type: ignore[arg-type]
