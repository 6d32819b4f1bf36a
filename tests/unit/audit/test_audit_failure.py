"""Fail closed: a full or unwritable disk makes appends raise AuditUnavailable, for good, never skip a record.

These use real failures (a file size limit, a full tmpfs, a read-only remount), not mocks.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit import AuditLog, AuditUnavailable, verify_log
from raywarden.audit.keys import load_audit_key
from tests.unit.audit.audit_support import run_python

pytestmark = pytest.mark.unit

FSIZE_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
from raywarden.audit import AuditLog, AuditUnavailable, load_or_create_audit_key

root = Path(sys.argv[1])
key = load_or_create_audit_key(root / "audit.key")
log = AuditLog.open(root / "audit", signing_key=key)
# RLIMIT_FSIZE makes writes past the limit fail with EFBIG, as a full disk fails with ENOSPC.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
acked, first, again = 0, "", ""
try:
    for i in range(100000):
        log.append({"kind": "request", "i": i, "pad": "x" * 200})
        acked += 1
except AuditUnavailable as exc:
    first = exc.diagnostics()
try:
    log.append({"kind": "tiny"})
    again = "appended"
except AuditUnavailable as exc:
    again = exc.message
log.close()
print(json.dumps({"acked": acked, "first": first, "again": again, "failed": log.failed}))
"""


def test_file_size_limit_fails_closed_and_keeps_only_acknowledged_records(tmp_path: Path) -> None:
    result = run_python(FSIZE_SCRIPT, str(tmp_path))
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["acked"] > 10
    assert "audit log unavailable" in outcome["first"] and "File too large" in outcome["first"]
    assert "hint:" in outcome["first"]
    assert "File too large" in outcome["again"] and outcome["failed"]  # stays failed, even for a tiny record
    # The partial batch was rolled back: the log holds exactly the acknowledged records and verifies.
    public_key = load_audit_key(tmp_path / "audit.key").public_key()
    assert verify_log(tmp_path / "audit", public_key=public_key).records == outcome["acked"]


def test_unwritable_location_refuses_to_open(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(AuditUnavailable, match="cannot write"):
        AuditLog.open(tmp_path / "file" / "audit", signing_key=key)


def test_full_disk_fails_closed_until_reopened(tiny_tmpfs: Path, key: Ed25519PrivateKey) -> None:
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * 32 * 1024)
    log = AuditLog.open(tiny_tmpfs / "audit", signing_key=key)
    acked = 0
    with pytest.raises(AuditUnavailable, match="No space left on device"):
        for i in range(10000):
            log.append({"kind": "request", "i": i, "pad": "x" * 1000})
            acked += 1
    filler.unlink()  # space is back, but this writer stays failed: it never silently resumes
    with pytest.raises(AuditUnavailable, match="No space left on device"):
        log.append({"kind": "tiny"})
    log.close()
    with AuditLog.open(tiny_tmpfs / "audit", signing_key=key) as reopened:
        assert reopened.append({"kind": "after"}) == acked
    assert verify_log(tiny_tmpfs / "audit", public_key=key.public_key()).records == acked + 1


def test_read_only_filesystem_refuses_to_open_but_still_verifies(tiny_tmpfs: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tiny_tmpfs / "audit", signing_key=key) as log:
        log.append({"kind": "before"})
    # Remounting needs no open writers, so the log is closed first; the full-disk test covers failing mid-run.
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    try:
        with pytest.raises(AuditUnavailable, match="Read-only file system"):
            AuditLog.open(tiny_tmpfs / "audit", signing_key=key)
        assert verify_log(tiny_tmpfs / "audit", public_key=key.public_key()).records == 1
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_tmpfs)], check=True)
