"""verify names each kind of tampering with the first bad sequence number."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from raywarden.audit import AuditLog, AuditVerificationError, audit_key_fingerprint, verify_log
from raywarden.audit.checkpoint import Checkpoint
from raywarden.audit.layout import CHECKPOINTS_NAME, list_segments
from raywarden.audit.record import GENESIS_HEAD, canonical_json, chain_head
from raywarden.errors import ConfigError
from tests.unit.audit.audit_support import MakeLog, checkpoint_lines, request_record, segment_lines, write_lines

pytestmark = pytest.mark.unit


def problem(audit_dir: Path, key: Ed25519PrivateKey, **kwargs: int) -> AuditVerificationError:
    with pytest.raises(AuditVerificationError) as caught:
        verify_log(audit_dir, public_key=key.public_key(), **kwargs)
    return caught.value


def flip(line: bytes, index: int) -> bytes:
    return line[:index] + bytes([line[index] ^ 0x01]) + line[index + 1 :]


def test_untouched_log_verifies(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    report = verify_log(make_log(30), public_key=key.public_key())
    assert (report.records, report.checkpoints, report.last_checkpoint_size, report.unsigned_records) == (30, 3, 30, 0)


@pytest.mark.parametrize("seq", [0, 14, 19, 29])
def test_flipped_byte_in_a_value(make_log: MakeLog, key: Ed25519PrivateKey, seq: int) -> None:
    path, lines = segment_lines(make_log(30))
    lines[seq] = flip(lines[seq], lines[seq].index(b"raysubmit_") + 3)
    write_lines(path, lines)
    found = problem(path.parent, key)
    assert (found.kind, found.seq) == ("modification", seq)
    assert f"line {seq + 1}" in str(found.location)


def test_flipped_byte_in_prev(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    path, lines = segment_lines(make_log(30))
    lines[5] = flip(lines[5], lines[5].index(b'"prev":"') + 12)
    write_lines(path, lines)
    assert (problem(path.parent, key).kind, problem(path.parent, key).seq) == ("modification", 5)


def test_changed_seq_number(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    path, lines = segment_lines(make_log(30))
    lines[12] = lines[12].replace(b'"seq":12,', b'"seq":13,')
    write_lines(path, lines)
    found = problem(path.parent, key)
    assert (found.kind, found.seq) == ("modification", 12)


@pytest.mark.parametrize("seq", [0, 14, 29])
def test_deleted_line(make_log: MakeLog, key: Ed25519PrivateKey, seq: int) -> None:
    path, lines = segment_lines(make_log(30))
    del lines[seq]
    write_lines(path, lines)
    found = problem(path.parent, key)
    expected_kind = "truncation" if seq == 29 else "deletion"  # the last record gone is a shorter log
    assert (found.kind, found.seq) == (expected_kind, seq)


def test_swapped_lines(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    path, lines = segment_lines(make_log(30))
    lines[7], lines[8] = lines[8], lines[7]
    write_lines(path, lines)
    found = problem(path.parent, key)
    assert (found.kind, found.seq) == ("reordering", 7)


def test_inserted_copy_of_an_older_line(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    path, lines = segment_lines(make_log(30))
    lines.insert(11, lines[3])
    write_lines(path, lines)
    found = problem(path.parent, key)
    assert (found.kind, found.seq) == ("insertion", 11)


def test_forged_record_inserted_with_a_consistent_chain(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    # The attacker recomputes seq and prev for everything after the insertion: only the signature catches it.
    path, lines = segment_lines(make_log(30))
    records = [json.loads(line) for line in lines]
    records.insert(12, {"kind": "request", "principal": "spiffe://td/user/mallory", "time": records[11]["time"]})
    head, rewritten = GENESIS_HEAD, []
    for seq, record in enumerate(records):
        record.update(seq=seq, prev=head.hex())
        line = canonical_json(record)
        head = chain_head(head, line)
        rewritten.append(line)
    write_lines(path, rewritten)
    found = problem(path.parent, key)
    assert found.kind == "modification" and found.seq == 10  # first record not covered by a good checkpoint
    assert "rewritten" in found.detail


@pytest.mark.parametrize("keep", [25, 20, 1, 0])
def test_truncated_tail(make_log: MakeLog, key: Ed25519PrivateKey, keep: int) -> None:
    path, lines = segment_lines(make_log(30))
    write_lines(path, lines[:keep])
    found = problem(path.parent, key)
    assert (found.kind, found.seq) == ("truncation", keep)


def test_file_cut_in_the_middle_of_a_line(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    path, lines = segment_lines(make_log(30))
    path.write_bytes(b"".join(line + b"\n" for line in lines[:27]) + lines[27][:40])
    found = problem(path.parent, key)
    assert (found.kind, found.seq) == ("truncation", 27)


def test_replaced_checkpoint_with_forged_head(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    audit_dir = make_log(30)
    cps = checkpoint_lines(audit_dir)
    forged = json.loads(cps[1])
    forged["checkpoint"]["head"] = "00" * 32
    cps[1] = canonical_json(forged)
    write_lines(audit_dir / CHECKPOINTS_NAME, cps)
    found = problem(audit_dir, key)
    assert (found.kind, found.seq) == ("checkpoint", 10)
    assert "signature does not verify" in found.detail and "line 2" in str(found.location)


def test_replaced_checkpoint_signed_by_another_key(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    audit_dir = make_log(30)
    cps = checkpoint_lines(audit_dir)
    original = json.loads(cps[2])["checkpoint"]
    other = Ed25519PrivateKey.generate()
    forged = Checkpoint(
        original["size"], bytes.fromhex(original["head"]), original["time"], audit_key_fingerprint(other)
    )
    cps[2] = forged.to_line(other).rstrip(b"\n")
    write_lines(audit_dir / CHECKPOINTS_NAME, cps)
    found = problem(audit_dir, key)
    assert (found.kind, found.seq) == ("checkpoint", 20)
    assert "another key" in found.detail


def test_replayed_checkpoint(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    audit_dir = make_log(30)
    cps = checkpoint_lines(audit_dir)
    cps[2] = cps[0]  # a genuine, validly signed, but old checkpoint in place of the newest
    write_lines(audit_dir / CHECKPOINTS_NAME, cps)
    found = problem(audit_dir, key)
    assert (found.kind, found.seq) == ("checkpoint", 20)


def test_wrong_public_key(make_log: MakeLog) -> None:
    audit_dir = make_log(5)
    with pytest.raises(AuditVerificationError) as caught:
        verify_log(audit_dir, public_key=Ed25519PrivateKey.generate().public_key())
    assert (caught.value.kind, caught.value.seq) == ("checkpoint", 0)


def test_first_problem_wins(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    path, lines = segment_lines(make_log(30))
    lines[25] = flip(lines[25], 3)
    lines[6] = flip(lines[6], lines[6].index(b"raysubmit_") + 3)
    write_lines(path, lines)
    assert problem(path.parent, key).seq == 6


def test_deleted_middle_segment(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    audit_dir = make_log(60, rotate_bytes=2048)
    segments = list_segments(audit_dir)
    segments[1].path.unlink()
    found = problem(audit_dir, key)
    assert (found.kind, found.seq) == ("deletion", segments[1].first_seq)


def test_since_checkpoint_skips_older_records(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    path, lines = segment_lines(make_log(30))
    lines[5] = flip(lines[5], lines[5].index(b"raysubmit_") + 3)
    write_lines(path, lines)
    report = verify_log(path.parent, public_key=key.public_key(), since_checkpoint=10)
    assert (report.verified_from, report.records) == (10, 30)
    with pytest.raises(ConfigError, match="no valid signed checkpoint"):
        verify_log(path.parent, public_key=key.public_key(), since_checkpoint=15)


def unsigned_tail_log(make_log: MakeLog) -> tuple[Path, list[bytes]]:
    """25 records with checkpoints at 10 and 20 only: records 20-24 are chained but not signed."""
    audit_dir = make_log(25)
    write_lines(audit_dir / CHECKPOINTS_NAME, checkpoint_lines(audit_dir)[:2])
    return segment_lines(audit_dir)


def test_unsigned_tail_is_reported(make_log: MakeLog, key: Ed25519PrivateKey) -> None:
    path, _ = unsigned_tail_log(make_log)
    assert verify_log(path.parent, public_key=key.public_key()).unsigned_records == 5


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("swap", ("reordering", 21)),
        ("delete", ("deletion", 22)),
        ("flip", ("modification", 21)),
    ],
)
def test_tampering_in_the_unsigned_tail(
    make_log: MakeLog, key: Ed25519PrivateKey, edit: str, expected: tuple[str, int]
) -> None:
    path, lines = unsigned_tail_log(make_log)
    if edit == "swap":
        lines[21], lines[22] = lines[22], lines[21]
    elif edit == "delete":
        del lines[22]
    else:
        lines[21] = flip(lines[21], lines[21].index(b"raysubmit_") + 3)
    write_lines(path, lines)
    found = problem(path.parent, key)
    assert (found.kind, found.seq) == expected


# -- property tests ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed_log(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> Path:
    audit_dir = tmp_path_factory.mktemp("closed") / "audit"
    with AuditLog.open(audit_dir, signing_key=key, checkpoint_every=5) as log:
        for i in range(24):
            log.append(request_record(i))
    return audit_dir


def tampered_copy(audit_dir: Path, workdir: str, data: bytes) -> Path:
    copy = Path(workdir) / "audit"
    shutil.copytree(audit_dir, copy)
    list_segments(copy)[0].path.write_bytes(data)
    return copy


@settings(max_examples=150, deadline=None)
@given(position=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_found_at_its_record(
    closed_log: Path, key: Ed25519PrivateKey, position: int, mask: int
) -> None:
    data = list_segments(closed_log)[0].path.read_bytes()
    position %= len(data)
    changed = data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]
    seq = data[:position].count(b"\n")  # a line's newline belongs to its record
    with tempfile.TemporaryDirectory() as workdir:
        with pytest.raises(AuditVerificationError) as caught:
            verify_log(tampered_copy(closed_log, workdir, changed), public_key=key.public_key())
    assert caught.value.seq == seq, caught.value.message


@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(min_value=0, max_value=23),
    fields=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20) | st.integers(), max_size=4),
)
def test_any_rewritten_record_is_found(
    closed_log: Path, key: Ed25519PrivateKey, seq: int, fields: dict[str, object]
) -> None:
    lines = list_segments(closed_log)[0].path.read_bytes().split(b"\n")[:-1]
    original = json.loads(lines[seq])
    replacement = {**fields, "seq": original["seq"], "prev": original["prev"], "time": original["time"]}
    if canonical_json(replacement) == lines[seq]:
        return
    lines[seq] = canonical_json(replacement)
    with tempfile.TemporaryDirectory() as workdir:
        with pytest.raises(AuditVerificationError) as caught:
            verify_log(
                tampered_copy(closed_log, workdir, b"".join(x + b"\n" for x in lines)), public_key=key.public_key()
            )
    assert (caught.value.kind, caught.value.seq) == ("modification", seq)
