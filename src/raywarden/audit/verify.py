"""Offline verification: recompute the chain, check every checkpoint signature, name the first bad record."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from raywarden.audit.anchor import ExportedHead
from raywarden.audit.checkpoint import Checkpoint, CheckpointFormatError, signature_problem
from raywarden.audit.errors import AuditVerificationError, ProblemKind
from raywarden.audit.keychain import CheckpointLine, SignedRotation, parse_line
from raywarden.audit.keys import audit_key_fingerprint, load_audit_public_key
from raywarden.audit.layout import CHECKPOINTS_NAME, PUBLIC_KEY_NAME, Segment, Snapshot, read_prefix, take_snapshot
from raywarden.audit.record import GENESIS_HEAD, chain_head
from raywarden.errors import ConfigError

# How far ahead the classifier looks for a missing sequence number before calling it a deletion.
_REORDER_WINDOW = 100_000


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_log`` checked; only returned when everything verified."""

    records: int  # records in the log (the next sequence number)
    checkpoints: int  # checkpoints whose signature verified
    last_checkpoint_size: int | None
    last_checkpoint_time: str | None = None
    verified_from: int = 0  # first sequence number checked (--since-checkpoint)
    unsigned_records: int = 0  # records after the last checkpoint: chained, not yet signed
    files: int = 0
    head: str = ""  # chain head after the last record, hex
    key_id: str | None = None
    key_source: str = "given"
    against_seq: int | None = None  # the exported head (--against) the log still matches, through this seq
    # Every key that signed the log, oldest first, with the log size from which on it signs (key rotations).
    key_chain: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, **asdict(self)}


def verify_log(
    audit_dir: Path,
    *,
    public_key: Ed25519PublicKey | None = None,
    since_checkpoint: int | None = None,
    against: ExportedHead | None = None,
) -> VerifyReport:
    """Verify every record against the hash chain and every checkpoint against ``public_key``.

    Raises ``AuditVerificationError`` naming the kind of problem and the first bad sequence number.
    Without ``public_key`` the copy in the audit dir is used, which proves consistency but not origin:
    pass the key printed by ``raywarden status`` (kept elsewhere) for that. ``since_checkpoint`` starts at
    the signed checkpoint of that log size, for logs whose older segments were archived. ``against`` is a
    head exported earlier (anchor.py): the record it ends at must still be there with the same chain head,
    whoever holds the audit key now; the log's own checkpoints up to it are then not trusted to locate a change.
    """
    if not audit_dir.is_dir():
        raise ConfigError(f"no audit log in {audit_dir}", hint="check --state-dir; the gateway creates it")
    key_source = "given"
    if public_key is None and (audit_dir / PUBLIC_KEY_NAME).is_file():
        public_key = load_audit_public_key(audit_dir / PUBLIC_KEY_NAME)
        key_source = f"{audit_dir / PUBLIC_KEY_NAME} (same folder as the log, not an independent anchor)"
    snapshot = take_snapshot(audit_dir)
    checkpoints, uses, checkpoint_problem = _check_checkpoints(snapshot.checkpoints, public_key)
    start_seq, start_head = 0, GENESIS_HEAD
    if since_checkpoint is not None:
        match = [c for c in checkpoints if c.size == since_checkpoint]
        if not match:
            sizes = ", ".join(str(c.size) for c in checkpoints[-5:]) or "none"
            raise ConfigError(
                f"no valid signed checkpoint covers exactly {since_checkpoint} records",
                hint=f"use the size of a checkpoint (the last ones: {sizes})",
            )
        start_seq, start_head = since_checkpoint, match[0].head
    anchors = [c for c in checkpoints if c.size > start_seq]
    if against is not None:
        if start_seq >= against.checkpoint.size:
            raise ConfigError(
                f"--since-checkpoint {start_seq} starts after {against.describe()}",
                hint="start at an earlier checkpoint, or leave --since-checkpoint out",
            )
        # Whoever holds the audit key can re-sign the log's own checkpoints: up to the exported head, only it counts.
        anchors = [against.checkpoint, *[c for c in anchors if c.size > against.checkpoint.size]]
    walker = _Walker(snapshot, start_seq, start_head, anchors)
    try:
        total, head = walker.run()
    except AuditVerificationError as problem:
        if checkpoint_problem is not None and checkpoint_problem.seq <= problem.seq:
            raise checkpoint_problem from None
        if against is not None and problem.seq < against.checkpoint.size:
            raise AuditVerificationError(
                problem.kind,
                problem.seq,
                f"{problem.detail}; the log no longer matches {against.describe()}",
                location=problem.location,
                hint="the log was changed after that head was exported (possibly re-signed with the audit key): "
                "treat every record from this sequence number on as tampered with, and keep the files as evidence",
            ) from None
        raise
    if checkpoint_problem is not None:
        raise checkpoint_problem
    last = checkpoints[-1] if checkpoints else None
    return VerifyReport(
        records=total,
        checkpoints=len(checkpoints),
        last_checkpoint_size=last.size if last else None,
        last_checkpoint_time=last.time if last else None,
        verified_from=start_seq,
        unsigned_records=total - (last.size if last else 0),
        files=len(snapshot.segments),
        head=head.hex(),
        key_id=audit_key_fingerprint(public_key) if public_key else None,
        key_source=key_source if public_key else "none (no checkpoints)",
        against_seq=against.seq if against is not None else None,
        key_chain=tuple((u.key_id, u.from_size) for u in uses),
    )


@dataclass(frozen=True)
class _KeyUse:
    key_id: str
    from_size: int  # the log size from which on this key signs


def _check_checkpoints(
    data: bytes, public_key: Ed25519PublicKey | None
) -> tuple[list[Checkpoint], list[_KeyUse], AuditVerificationError | None]:
    """Valid checkpoints in order, the chain of keys that signed them, and the first problem among the lines
    (reported by first bad seq).

    The file is read in order with one current key: each checkpoint must be signed by it; a key rotation
    (audit/keychain.py) must come from it, be signed by it and by the next key, and commit to the size and
    head of the last good checkpoint; then the next key is current. ``public_key`` anchors the chain: it must
    be one of its keys, the first or any later one (each rotation is signed by both of its keys).
    """
    good: list[Checkpoint] = []
    problem: AuditVerificationError | None = None
    lines = data.split(b"\n")
    torn = lines.pop()
    if not lines and not torn:
        return good, [], None
    if public_key is None:
        raise ConfigError(
            "the audit log has signed checkpoints but no public key was given",
            hint="pass --public-key with the key printed by `raywarden status`",
        )

    def note(detail: str, lineno: int) -> None:
        nonlocal problem
        if problem is None:
            # Records after the last good checkpoint are no longer covered by a valid signature.
            problem = AuditVerificationError(
                "checkpoint", good[-1].size if good else 0, detail, location=f"{CHECKPOINTS_NAME} line {lineno}"
            )

    parsed: list[tuple[int, CheckpointLine | SignedRotation]] = []
    for index, line in enumerate(lines, start=1):
        try:
            parsed.append((index, parse_line(line)))
        except CheckpointFormatError as exc:
            note(f"malformed checkpoint: {exc}", index)
    key, uses = _first_key(parsed, public_key)
    anchor_id = audit_key_fingerprint(public_key)
    chain = [u.key_id for u in uses]
    if anchor_id not in chain:
        note(f"the key given ({anchor_id}) is not among the keys that signed this log ({' -> '.join(chain)})", 1)
    for index, entry in parsed:
        if isinstance(entry, SignedRotation):
            rotation = entry.rotation
            why = _rotation_problem(entry, audit_key_fingerprint(key), good[-1] if good else None)
            if why is not None:
                note(f"key rotation at size {rotation.size}: {why}", index)
                continue
            key = rotation.to_key
            continue
        checkpoint, signature = entry
        why = signature_problem(checkpoint, signature, key)
        if why is not None:
            retired = any(u.key_id == checkpoint.key_id for u in uses)
            note(f"checkpoint for size {checkpoint.size}: {why}{' (a retired key)' if retired else ''}", index)
            continue
        if good and checkpoint.size <= good[-1].size:
            note(f"checkpoint for size {checkpoint.size} follows one for {good[-1].size} (replayed?)", index)
            continue
        good.append(checkpoint)
    if torn:
        note("incomplete last checkpoint line", len(lines) + 1)
    return good, uses, problem


def _first_key(
    parsed: list[tuple[int, CheckpointLine | SignedRotation]], anchor: Ed25519PublicKey
) -> tuple[Ed25519PublicKey, list[_KeyUse]]:
    """The key the log starts with and the chain the rotation lines name. Without rotations it is the anchor;
    the rotations themselves are checked in order by the caller."""
    rotations = [entry.rotation for _, entry in parsed if isinstance(entry, SignedRotation)]
    if not rotations:
        return anchor, [_KeyUse(audit_key_fingerprint(anchor), 0)]
    uses = [_KeyUse(rotations[0].from_id, 0), *(_KeyUse(r.to_id, r.size) for r in rotations)]
    return rotations[0].from_key, uses


def _rotation_problem(entry: SignedRotation, current_id: str, last: Checkpoint | None) -> str | None:
    rotation = entry.rotation
    if rotation.from_id != current_id:
        return f"it hands over from {rotation.from_id}, but {current_id} signs the log here (moved or replayed?)"
    if last is None or (last.size, last.head) != (rotation.size, rotation.head):
        return "it does not follow the old key's last checkpoint (same size and head)"
    return entry.problem()


@dataclass
class _Line:
    seq: int  # position in the log, i.e. the sequence number this line must carry
    data: bytes
    location: str
    torn: bool = False  # an incomplete last line (no newline)


class _Walker:
    """Walks the records: a fast hash-only pass between signed checkpoints, a parsing pass where needed."""

    def __init__(self, snapshot: Snapshot, start_seq: int, start_head: bytes, anchors: list[Checkpoint]) -> None:
        self.segments = snapshot.segments
        self.start_seq = start_seq
        self.start_head = start_head
        self.anchors = anchors
        self._cache: tuple[int, list[bytes], bytes] | None = None

    def _segment_lines(self, index: int) -> tuple[list[bytes], bytes]:
        """Complete lines of segment ``index`` and its incomplete tail (b"" normally); last one cached."""
        if self._cache is None or self._cache[0] != index:
            segment, size = self.segments[index]
            lines = read_prefix(segment.path, size).split(b"\n")
            torn = lines.pop()
            self._cache = (index, lines, torn)
        return self._cache[1], self._cache[2]

    def _start(self) -> tuple[int, int, int]:
        """(segment index, line index, position) of the first record to check."""
        if self.start_seq == 0:
            return 0, 0, 0  # positions count from the first line present; a missing front shows as deletion
        for index in range(len(self.segments) - 1, -1, -1):
            segment: Segment = self.segments[index][0]
            if segment.first_seq <= self.start_seq:
                return index, self.start_seq - segment.first_seq, self.start_seq
        raise AuditVerificationError("deletion", self.start_seq, "no segment holds this checkpoint's next record")

    def run(self) -> tuple[int, bytes]:
        """Check everything; return (number of records, chain head)."""
        sha256 = hashlib.sha256
        first_si, first_li, pos = self._start()
        head = self.start_head
        anchors = self.anchors
        anchor_index = 0
        next_anchor = anchors[0].size if anchors else -1
        last_good = (first_si, first_li, pos, head)  # where the last verified anchor left us
        for si in range(first_si, len(self.segments)):
            lines, torn = self._segment_lines(si)
            start_li = first_li if si == first_si else 0
            if start_li > len(lines):
                raise AuditVerificationError("deletion", self.start_seq, "the segment holding it is too short")
            for li in range(start_li, len(lines)):
                # Hot loop: chain_head inlined; RFC 6962 section 2.1 prefixes 0x00 (leaf) and 0x01 (node).
                head = sha256(b"\x01" + head + sha256(b"\x00" + lines[li]).digest()).digest()
                pos += 1
                if pos == next_anchor:
                    if head != anchors[anchor_index].head:
                        self._scan(last_good, anchors[anchor_index])
                        raise self._unlocated(last_good[2], anchors[anchor_index])
                    last_good = (si, li + 1, pos, head)
                    anchor_index += 1
                    next_anchor = anchors[anchor_index].size if anchor_index < len(anchors) else -1
            if torn and si != len(self.segments) - 1:
                self._scan(last_good, None)
        if anchor_index < len(anchors):
            # A signed checkpoint covers records that are not there: find where they went.
            self._scan(last_good, anchors[anchor_index])
            raise self._unlocated(last_good[2], anchors[anchor_index])
        # Records after the last checkpoint have no signature yet; their seq and prev fields still must agree.
        self._scan(last_good, None)
        return pos, head

    def _lines_from(self, si: int, li: int, pos: int) -> Iterator[_Line]:
        for index in range(si, len(self.segments)):
            lines, torn = self._segment_lines(index)
            name = self.segments[index][0].path.name
            for line_index in range(li if index == si else 0, len(lines)):
                yield _Line(pos, lines[line_index], f"{name} line {line_index + 1}")
                pos += 1
            if torn:
                yield _Line(pos, torn, f"{name} line {len(lines) + 1}", torn=True)
                pos += 1

    def _scan(self, start: tuple[int, int, int, bytes], anchor: Checkpoint | None) -> None:
        """Parse and check each record from ``start``; raise at the first inconsistency.

        Stops at ``anchor`` (raising if the head differs there) or, without one, at the end of the log.
        """
        si, li, pos, head = start
        window_start = pos
        lines = self._lines_from(si, li, pos)
        current = next(lines, None)
        previous: _Line | None = None
        while current is not None:
            following = next(lines, None)
            e = current.seq
            if current.torn:
                kind: ProblemKind = "truncation" if following is None else "modification"
                raise AuditVerificationError(
                    kind, e, "incomplete line (cut file or a write torn by a crash)", location=current.location
                )
            record = _parse(current.data)
            if record is None:
                raise AuditVerificationError(
                    "modification", e, "record is not a valid log record", location=current.location
                )
            seq, prev = record["seq"], record["prev"]
            if seq != e:
                self._bad_seq(current, seq, following, lines, anchor)
            if prev != head.hex():
                raise self._bad_prev(current, previous, record, following, anchor, window_start)
            head = chain_head(head, current.data)
            pos = e + 1
            if anchor is not None and pos == anchor.size:
                if head == anchor.head:
                    return
                raise self._anchor_mismatch(current, following, anchor, window_start)
            previous, current = current, following
        if anchor is not None:
            raise AuditVerificationError(
                "truncation",
                pos,
                f"a signed checkpoint covers {anchor.size} records but the log ends at seq {pos - 1}",
                location=f"checkpoint signed at {anchor.time}",
            )

    def _bad_seq(
        self, current: _Line, seq: int, following: _Line | None, rest: Iterator[_Line], anchor: Checkpoint | None
    ) -> None:
        e = current.seq
        next_record = _parse(following.data) if following is not None else None
        next_seq = next_record["seq"] if next_record is not None else None
        last_covered = following is None and anchor is not None and anchor.size == e + 1
        if next_seq == e + 1 or last_covered:
            raise AuditVerificationError(
                "modification", e, f"the record in this place carries seq {seq}", location=current.location
            )
        if seq > e:
            later = [following] if following is not None else []
            for index, line in enumerate(rest):
                if index >= _REORDER_WINDOW:
                    break
                later.append(line)
            for line in later:
                found = _parse(line.data)
                if found is not None and found["seq"] == e:
                    raise AuditVerificationError(
                        "reordering",
                        e,
                        f"seq {e} appears later ({line.location}); seq {seq} is in its place",
                        location=current.location,
                    )
            raise AuditVerificationError(
                "deletion", e, f"records {e} to {seq - 1} are missing", location=current.location
            )
        raise AuditVerificationError(
            "insertion", e, f"a record with seq {seq} appears where seq {e} belongs", location=current.location
        )

    def _bad_prev(
        self,
        current: _Line,
        previous: _Line | None,
        record: dict[str, Any],
        following: _Line | None,
        anchor: Checkpoint | None,
        window_start: int,
    ) -> AuditVerificationError:
        # The record does not commit to the chain so far. If it is consistent with what follows it, the
        # record before it was changed; otherwise this record's own prev field was.
        e = current.seq
        claimed = bytes.fromhex(record["prev"])
        own_head = chain_head(claimed, current.data)
        next_record = _parse(following.data) if following is not None and not following.torn else None
        if next_record is not None:
            consistent = next_record["prev"] == own_head.hex()
        elif anchor is not None and anchor.size == e + 1:
            consistent = own_head == anchor.head
        else:
            consistent = False
        if consistent and previous is not None and e > window_start:
            return AuditVerificationError(
                "modification",
                e - 1,
                f"this record's hash no longer matches the prev field of seq {e}",
                location=previous.location,
            )
        return AuditVerificationError(
            "modification", e, "prev does not match the hash of the records before", location=current.location
        )

    def _anchor_mismatch(
        self, current: _Line, following: _Line | None, anchor: Checkpoint, window_start: int
    ) -> AuditVerificationError:
        # Every record agreed with its neighbour, yet the head differs from the signed one: either the last
        # record before the checkpoint changed (its successor, if any, still commits to the original), or the
        # whole stretch since the previous checkpoint was rewritten consistently.
        e = current.seq
        next_record = _parse(following.data) if following is not None and not following.torn else None
        if next_record is None or next_record["prev"] == anchor.head.hex():
            return AuditVerificationError(
                "modification",
                e,
                f"the chain no longer matches the checkpoint signed at {anchor.time}",
                location=current.location,
            )
        return AuditVerificationError(
            "modification",
            window_start,
            f"records {window_start} to {e} were rewritten; only the checkpoint signed at {anchor.time} shows it",
        )

    def _unlocated(self, window_start: int, anchor: Checkpoint) -> AuditVerificationError:
        return AuditVerificationError(
            "modification", window_start, f"records up to {anchor.size - 1} do not match the signed checkpoint"
        )


def _parse(data: bytes) -> dict[str, Any] | None:
    """A record with an int seq, a 64-hex-digit prev and a time; None for anything else."""
    try:
        record = json.loads(data)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(record, dict):
        return None
    seq, prev = record.get("seq"), record.get("prev")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(record.get("time"), str):
        return None
    if not isinstance(prev, str) or len(prev) != 64:
        return None
    try:
        bytes.fromhex(prev)
    except ValueError:
        return None
    return record
