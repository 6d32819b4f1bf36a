"""Offline verification: recompute the chain, check every checkpoint signature, name the first bad record."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from raywarden.audit.anchor import ExportedHead
from raywarden.audit.chainwalk import ChainWalker
from raywarden.audit.checkpoint import Checkpoint, CheckpointFormatError, signature_problem
from raywarden.audit.errors import AuditVerificationError
from raywarden.audit.keychain import CheckpointLine, SignedRotation, parse_line
from raywarden.audit.keys import audit_key_fingerprint, load_audit_public_key
from raywarden.audit.layout import CHECKPOINTS_NAME, PUBLIC_KEY_NAME, take_snapshot
from raywarden.audit.record import GENESIS_HEAD
from raywarden.errors import ConfigError


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
    walker = ChainWalker(snapshot, start_seq, start_head, anchors)
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
