"""Signed checkpoints: (log size, chain head, time) signed with the Ed25519 audit key."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from raywarden.audit.keys import audit_key_fingerprint
from raywarden.audit.record import canonical_json
from raywarden.errors import RaywardenError

CHECKPOINT_VERSION = 1
# Context string prepended to the signed bytes, so that a signature by the audit key over a checkpoint can
# never be replayed as a signature over anything else the key might sign, and vice versa.
SIGNING_CONTEXT = b"raywarden audit checkpoint v1\n"


@dataclass(frozen=True)
class Checkpoint:
    """The first ``size`` records chain to ``head``; signed at ``time`` by the key named ``key_id``."""

    size: int
    head: bytes
    time: str
    key_id: str

    def body(self) -> dict[str, Any]:
        return {
            "head": self.head.hex(),
            "key_id": self.key_id,
            "size": self.size,
            "time": self.time,
            "version": CHECKPOINT_VERSION,
        }

    def signed_bytes(self) -> bytes:
        return SIGNING_CONTEXT + canonical_json(self.body())

    def to_line(self, key: Ed25519PrivateKey) -> bytes:
        """One canonical JSON line: ``{"checkpoint": {...}, "signature": "<base64>"}``."""
        signature = base64.b64encode(key.sign(self.signed_bytes())).decode("ascii")
        return canonical_json({"checkpoint": self.body(), "signature": signature}) + b"\n"


class CheckpointFormatError(RaywardenError):
    """A checkpoint line does not parse; the message says why."""


def parse_checkpoint(line: bytes) -> tuple[Checkpoint, bytes]:
    """Parse one checkpoint line into the checkpoint and its raw signature; raise on malformed input."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointFormatError("not valid JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("checkpoint"), dict):
        raise CheckpointFormatError("not a checkpoint object")
    body, signature = obj["checkpoint"], obj.get("signature")
    size, head, time, key_id = body.get("size"), body.get("head"), body.get("time"), body.get("key_id")
    if body.get("version") != CHECKPOINT_VERSION:
        raise CheckpointFormatError(f"unknown checkpoint version {body.get('version')!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CheckpointFormatError("size is not a non-negative integer")
    if not isinstance(head, str) or not isinstance(time, str) or not isinstance(key_id, str):
        raise CheckpointFormatError("head, time or key_id missing")
    if not isinstance(signature, str):
        raise CheckpointFormatError("signature missing")
    try:
        head_bytes = bytes.fromhex(head)
        sig_bytes = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise CheckpointFormatError("head or signature is not well-formed") from None
    if len(head_bytes) != 32:
        raise CheckpointFormatError("head is not a SHA-256 hash")
    return Checkpoint(size=size, head=head_bytes, time=time, key_id=key_id), sig_bytes


def signature_problem(checkpoint: Checkpoint, signature: bytes, public_key: Ed25519PublicKey) -> str | None:
    """None when ``signature`` is a valid signature of ``checkpoint`` by ``public_key``; else why not."""
    expected_id = audit_key_fingerprint(public_key)
    if checkpoint.key_id != expected_id:
        return f"signed by another key ({checkpoint.key_id}, expected {expected_id})"
    try:
        public_key.verify(signature, checkpoint.signed_bytes())
    except InvalidSignature:
        return "signature does not verify"
    return None
