"""Audit-key rotation: the old key hands over to a new one at a line both sign; `verify` follows the chain of keys
from any of them and still names every tampering (docs/audit.md "Rotating the audit key")."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from raywarden.audit import AuditLog, AuditUnavailable, AuditVerificationError, audit_key_fingerprint, verify_log
from raywarden.audit.anchor import export_document, load_exported_head
from raywarden.audit.checkpoint import Checkpoint
from raywarden.audit.keychain import KeyRotation
from raywarden.audit.layout import CHECKPOINTS_NAME, PUBLIC_KEY_NAME, list_segments
from raywarden.audit.logfiles import staged_key_path
from raywarden.audit.record import canonical_json
from raywarden.cli.audit import register
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.state import StateDir
from tests.unit.audit.audit_support import checkpoint_lines, request_record, segment_lines, write_lines

pytestmark = pytest.mark.unit

BEFORE, AFTER = 30, 20
ROTATED_AT = BEFORE + 1  # the rotation record is the old key's last


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(path: Path, key: Ed25519PrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem(key))
    path.chmod(0o600)


def installer(audit_dir: Path, key_path: Path, new: Ed25519PrivateKey) -> Callable[[], None]:
    def install() -> None:
        write_key(key_path, new)
        (audit_dir / PUBLIC_KEY_NAME).write_text(
            new.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    return install


@pytest.fixture
def k1() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def k2() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def make_rotated(tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey) -> Path:
    """BEFORE records under k1 (checkpoints every 10), the rotation, then AFTER records under k2."""
    audit_dir, key_path = tmp_path / "audit", tmp_path / "keys" / "audit.key"
    write_key(key_path, k1)
    with AuditLog.open(audit_dir, signing_key=k1, checkpoint_every=10, key_path=key_path) as log:
        for i in range(BEFORE):
            log.append(request_record(i))
        rotation = log.rotate_key(k2, install=installer(audit_dir, key_path, k2), actor="test")
        assert (rotation.size, rotation.from_id, rotation.to_id) == (
            ROTATED_AT,
            audit_key_fingerprint(k1),
            audit_key_fingerprint(k2),
        )
        for i in range(BEFORE, BEFORE + AFTER):
            log.append(request_record(i))
    return audit_dir


def problem(audit_dir: Path, key: Ed25519PrivateKey) -> AuditVerificationError:
    with pytest.raises(AuditVerificationError) as caught:
        verify_log(audit_dir, public_key=key.public_key())
    return caught.value


def lines_by_kind(audit_dir: Path) -> tuple[list[bytes], int]:
    """The checkpoint file's lines and the index of the rotation line."""
    lines = checkpoint_lines(audit_dir)
    return lines, next(i for i, line in enumerate(lines) if b'"rotation"' in line)


# -- a rotated log verifies from either key ------------------------------------------------------------------


def test_a_rotated_log_verifies_from_the_old_and_from_the_new_key(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey
) -> None:
    audit_dir = make_rotated(tmp_path, k1, k2)
    for anchor in (k1, k2):
        report = verify_log(audit_dir, public_key=anchor.public_key())
        assert report.records == BEFORE + 1 + AFTER and report.unsigned_records == 0
        assert report.key_chain == ((audit_key_fingerprint(k1), 0), (audit_key_fingerprint(k2), ROTATED_AT))
    rotate_record = json.loads(segment_lines(audit_dir)[1][BEFORE])
    assert rotate_record["event"] == "key.rotate" and rotate_record["to"] == audit_key_fingerprint(k2)
    # The old key signed its last checkpoint right at the rotation; the new one every checkpoint after it.
    checkpoints = [json.loads(line).get("checkpoint") for line in checkpoint_lines(audit_dir)]
    signed = [(c["size"], c["key_id"]) for c in checkpoints if c]
    assert (ROTATED_AT, audit_key_fingerprint(k1)) in signed
    assert all(key == audit_key_fingerprint(k2) for size, key in signed if size > ROTATED_AT)


def test_a_key_outside_the_chain_is_refused(tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey) -> None:
    found = problem(make_rotated(tmp_path, k1, k2), Ed25519PrivateKey.generate())
    assert (found.kind, found.seq) == ("checkpoint", 0) and "not among the keys" in found.detail


def test_the_folder_public_key_swapped_for_a_foreign_one_is_caught(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey
) -> None:
    audit_dir = make_rotated(tmp_path, k1, k2)
    foreign = Ed25519PrivateKey.generate().public_key()
    (audit_dir / PUBLIC_KEY_NAME).write_bytes(
        foreign.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(AuditVerificationError) as caught:
        verify_log(audit_dir)  # the folder's own copy of the key
    assert caught.value.kind == "checkpoint"


def test_two_rotations_chain_three_keys(tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey) -> None:
    audit_dir = make_rotated(tmp_path, k1, k2)
    k3 = Ed25519PrivateKey.generate()
    key_path = tmp_path / "keys" / "audit.key"
    with AuditLog.open(audit_dir, signing_key=k2, checkpoint_every=10, key_path=key_path) as log:
        log.rotate_key(k3, install=installer(audit_dir, key_path, k3), actor="test")
        log.append(request_record(99))
    for anchor in (k1, k2, k3):
        report = verify_log(audit_dir, public_key=anchor.public_key())
        assert [key for key, _ in report.key_chain] == [audit_key_fingerprint(k) for k in (k1, k2, k3)]


# -- every tampering is still named ---------------------------------------------------------------------------


@pytest.mark.parametrize("anchor", ["old", "new"])
def test_deleted_rotation_line(tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey, anchor: str) -> None:
    audit_dir = make_rotated(tmp_path, k1, k2)
    lines, at = lines_by_kind(audit_dir)
    del lines[at]
    write_lines(audit_dir / CHECKPOINTS_NAME, lines)
    found = problem(audit_dir, k1 if anchor == "old" else k2)
    assert found.kind == "checkpoint"
    # Anchored on the old key, the new key's first checkpoint is the first unverifiable one.
    assert found.seq == (ROTATED_AT if anchor == "old" else 0)


def test_rotation_line_to_a_key_of_the_attackers_own(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey
) -> None:
    audit_dir = make_rotated(tmp_path, k1, k2)
    lines, at = lines_by_kind(audit_dir)
    body = json.loads(lines[at])["rotation"]
    mallory = Ed25519PrivateKey.generate()
    # Without the old key, the attacker can sign with their own key only: the old key's signature fails.
    forged = KeyRotation(body["size"], bytes.fromhex(body["head"]), body["time"], k1.public_key(), mallory.public_key())
    lines[at] = forged.to_line(mallory, mallory).rstrip(b"\n")
    write_lines(audit_dir / CHECKPOINTS_NAME, lines)
    found = problem(audit_dir, k1)
    assert found.kind == "checkpoint" and "old key's signature" in found.detail


def test_rotation_line_with_an_edited_field(tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey) -> None:
    audit_dir = make_rotated(tmp_path, k1, k2)
    lines, at = lines_by_kind(audit_dir)
    edited = json.loads(lines[at])
    edited["rotation"]["time"] = "2000-01-01T00:00:00.000000Z"
    lines[at] = canonical_json(edited)
    write_lines(audit_dir / CHECKPOINTS_NAME, lines)
    found = problem(audit_dir, k2)
    assert (found.kind, found.seq) == ("checkpoint", ROTATED_AT) and "does not verify" in found.detail


@pytest.mark.parametrize("where", ["earlier", "later", "twice"])
def test_rotation_line_moved_or_replayed(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey, where: str
) -> None:
    audit_dir = make_rotated(tmp_path, k1, k2)
    lines, at = lines_by_kind(audit_dir)
    line = lines[at]
    if where == "twice":
        lines.append(line)
    else:
        del lines[at]
        lines.insert(1 if where == "earlier" else len(lines), line)
    write_lines(audit_dir / CHECKPOINTS_NAME, lines)
    found = problem(audit_dir, k1)
    assert found.kind == "checkpoint"
    assert found.seq <= (BEFORE + 1 + AFTER if where == "twice" else ROTATED_AT)


def test_a_checkpoint_by_the_retired_key_after_the_rotation(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey
) -> None:
    """Someone who kept the old key re-signs the end of the log: the old key no longer speaks for it."""
    audit_dir = make_rotated(tmp_path, k1, k2)
    lines = checkpoint_lines(audit_dir)
    last = json.loads(lines[-1])["checkpoint"]
    forged = Checkpoint(last["size"] + 5, bytes.fromhex(last["head"]), last["time"], audit_key_fingerprint(k1))
    lines.append(forged.to_line(k1).rstrip(b"\n"))
    write_lines(audit_dir / CHECKPOINTS_NAME, lines)
    found = problem(audit_dir, k2)
    assert found.kind == "checkpoint" and "retired key" in found.detail


@pytest.mark.parametrize("seq", [3, BEFORE - 1, BEFORE, ROTATED_AT, BEFORE + AFTER])
def test_records_changed_on_either_side_of_the_rotation(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey, seq: int
) -> None:
    path, lines = segment_lines(make_rotated(tmp_path, k1, k2))
    lines[seq] = lines[seq].replace(b'"kind":"', b'"kind":"x', 1)
    write_lines(path, lines)
    for anchor in (k1, k2):
        found = problem(path.parent, anchor)
        assert (found.kind, found.seq) == ("modification", seq)


def test_records_removed_after_the_rotation(tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey) -> None:
    path, lines = segment_lines(make_rotated(tmp_path, k1, k2))
    write_lines(path, lines[: ROTATED_AT - 3])
    found = problem(path.parent, k2)
    assert (found.kind, found.seq) == ("truncation", ROTATED_AT - 3)


@pytest.fixture(scope="module")
def rotated_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ed25519PrivateKey]:
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    return make_rotated(tmp_path_factory.mktemp("rotated"), k1, k2), k2


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_of_a_rotated_log_is_found_at_its_record(
    rotated_copy: tuple[Path, Ed25519PrivateKey], position: int, mask: int
) -> None:
    audit_dir, k2 = rotated_copy
    data = list_segments(audit_dir)[0].path.read_bytes()
    position %= len(data)
    changed = data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]
    with tempfile.TemporaryDirectory() as workdir:
        copy = Path(workdir) / "audit"
        shutil.copytree(audit_dir, copy)
        list_segments(copy)[0].path.write_bytes(changed)
        with pytest.raises(AuditVerificationError) as caught:
            verify_log(copy, public_key=k2.public_key())
    assert caught.value.seq == data[:position].count(b"\n")


# -- writers follow, or fail closed ----------------------------------------------------------------------------


def test_another_writer_follows_the_rotation(tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey) -> None:
    audit_dir, key_path = tmp_path / "audit", tmp_path / "keys" / "audit.key"
    write_key(key_path, k1)
    gateway = AuditLog.open(audit_dir, signing_key=k1, checkpoint_every=5, key_path=key_path)
    try:
        for i in range(7):
            gateway.append(request_record(i))
        with AuditLog.open(audit_dir, signing_key=k1, key_path=key_path) as operator:
            operator.rotate_key(k2, install=installer(audit_dir, key_path, k2), actor="test")
        for i in range(7, 20):
            gateway.append(request_record(i))
        assert gateway.key_id == audit_key_fingerprint(k2)
    finally:
        gateway.close()
    report = verify_log(audit_dir, public_key=k1.public_key())
    assert report.records == 21 and [k for k, _ in report.key_chain] == [audit_key_fingerprint(k) for k in (k1, k2)]


def test_a_writer_that_cannot_find_the_new_key_fails_closed(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey
) -> None:
    audit_dir, key_path = tmp_path / "audit", tmp_path / "keys" / "audit.key"
    write_key(key_path, k1)
    stale = AuditLog.open(audit_dir, signing_key=k1)  # no key file to read the new key from
    try:
        stale.append(request_record(0))
        with AuditLog.open(audit_dir, signing_key=k1, key_path=key_path) as operator:
            operator.rotate_key(k2, install=installer(audit_dir, key_path, k2), actor="test")
        with pytest.raises(AuditUnavailable, match=r"signed by .* now, but this writer holds"):
            stale.append(request_record(1))
    finally:
        stale.close()
    assert verify_log(audit_dir, public_key=k2.public_key()).records == 2  # nothing was signed by the old key


def test_an_interrupted_rotation_is_finished_by_the_next_writer(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey
) -> None:
    audit_dir, key_path = tmp_path / "audit", tmp_path / "keys" / "audit.key"
    write_key(key_path, k1)
    write_key(staged_key_path(key_path), k2)

    def crash() -> None:
        raise OSError(28, "No space left on device")

    log = AuditLog.open(audit_dir, signing_key=k1, key_path=key_path)
    log.append(request_record(0))
    with pytest.raises(AuditUnavailable):
        log.rotate_key(k2, install=crash, actor="test")
    log.close()
    # The rotation line is written, the key file still holds the old key: the next writer finishes the job.
    with AuditLog.open(audit_dir, signing_key=k1, key_path=key_path) as resumed:
        resumed.append(request_record(1))
        assert resumed.key_id == audit_key_fingerprint(k2)
    assert not staged_key_path(key_path).exists() and key_path.read_bytes() == pem(k2)
    assert verify_log(audit_dir, public_key=k1.public_key()).records == 3


# -- anchoring across rotations ---------------------------------------------------------------------------------


def test_an_exported_head_still_anchors_after_the_rotation(
    tmp_path: Path, k1: Ed25519PrivateKey, k2: Ed25519PrivateKey
) -> None:
    audit_dir, key_path = tmp_path / "audit", tmp_path / "keys" / "audit.key"
    write_key(key_path, k1)
    with AuditLog.open(audit_dir, signing_key=k1, checkpoint_every=10, key_path=key_path) as log:
        for i in range(12):
            log.append(request_record(i))
        signed = log.checkpoint()
        assert signed is not None
        (tmp_path / "head.json").write_text(json.dumps(export_document(signed, k1, trust_domain="td")))
        log.rotate_key(k2, install=installer(audit_dir, key_path, k2), actor="test")
        for i in range(12, 30):
            log.append(request_record(i))
    head = load_exported_head(tmp_path / "head.json")
    report = verify_log(audit_dir, public_key=head.public_key, against=head)
    assert report.against_seq == 11 and report.records == 31
    # The holder of the new key rewrites history before the export and re-signs all of it with the new key.
    path, lines = segment_lines(audit_dir)
    lines[4] = lines[4].replace(b'"kind":"', b'"kind":"x', 1)
    write_lines(path, lines)
    with pytest.raises(AuditVerificationError) as caught:
        verify_log(audit_dir, public_key=k2.public_key(), against=head)
    assert caught.value.seq <= 4 and "exported" in caught.value.message


# -- the CLI ------------------------------------------------------------------------------------------------


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def main() -> None:
        """Test root."""

    register(root)
    return root


def test_cli_rotate_key_then_verify_with_either_key(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    state = StateDir(tmp_path / "state")
    init_state(state, ClusterConfig(listen=Listen(host="127.0.0.1", port=1)), admin_name="admin", profile_name="a")
    old_public = tmp_path / "old.pem"
    old_public.write_bytes((state.audit_dir / PUBLIC_KEY_NAME).read_bytes())
    runner = CliRunner()
    rotated = runner.invoke(app, ["audit", "rotate-key", "--json", "--state-dir", str(state.root)])
    assert rotated.exit_code == 0, rotated.output
    info = json.loads(rotated.output)
    assert info["from"] != info["to"] and info["public_key"] == (state.audit_dir / PUBLIC_KEY_NAME).read_text()
    assert (state.audit_key.stat().st_mode & 0o777) == 0o600 and not staged_key_path(state.audit_key).exists()
    for extra in ([], ["--public-key", str(old_public)]):
        ok = runner.invoke(app, ["audit", "verify", *extra, "--state-dir", str(state.root)])
        assert ok.exit_code == 0 and "signed by 2 keys in turn" in ok.output, ok.output
    twice = runner.invoke(app, ["audit", "rotate-key", "--state-dir", str(state.root)])
    assert twice.exit_code == 0 and "audit key rotated at record" in twice.output
    records = [json.loads(line) for line in next(state.audit_dir.glob("audit-*.jsonl")).read_text().splitlines()]
    assert [r["event"] for r in records if r.get("event") == "key.rotate"] == ["key.rotate", "key.rotate"]
    assert records[-1]["actor"].startswith("local:")
