"""Audit-key rotation lines: the old key hands the log over to a new key at one signed point.

A rotation is one line in ``checkpoints.jsonl``, right after the old key's last checkpoint::

    {"rotation": {"version": 1, "size": N, "head": "<hex>", "from": "sha256:..", "from_key": "<b64 raw>",
                  "to": "sha256:..", "to_key": "<b64 raw>", "time": "..."},
     "signature": "<by the old key>", "signature_new": "<by the new key>"}

Both keys sign ``b"raywarden audit key rotation v1\\n" + canonical_json(rotation)``, a context distinct from a
checkpoint's. The old key's signature keeps anyone from grafting a forged future onto a log trusted under the
old key; the new key's keeps anyone from grafting a forged past onto a log trusted under the new key. So a
verifier anchored on any key of the chain can follow it both ways (docs/audit.md "Rotating the audit key").
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from raywarden.audit.checkpoint import Checkpoint, CheckpointFormatError, parse_checkpoint
from raywarden.audit.keys import audit_key_fingerprint
from raywarden.audit.record import canonical_json

ROTATION_VERSION = 1
ROTATION_CONTEXT = b"raywarden audit key rotation v1\n"


def _raw(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


@dataclass(frozen=True)
class KeyRotation:
    """From the first ``size`` records on (chain head ``head``), checkpoints are signed by ``to_key``."""

    size: int
    head: bytes
    time: str
    from_key: Ed25519PublicKey
    to_key: Ed25519PublicKey

    @property
    def from_id(self) -> str:
        return audit_key_fingerprint(self.from_key)

    @property
    def to_id(self) -> str:
        return audit_key_fingerprint(self.to_key)

    def body(self) -> dict[str, Any]:
        return {
            "from": self.from_id,
            "from_key": _raw(self.from_key),
            "head": self.head.hex(),
            "size": self.size,
            "time": self.time,
            "to": self.to_id,
            "to_key": _raw(self.to_key),
            "version": ROTATION_VERSION,
        }

    def signed_bytes(self) -> bytes:
        return ROTATION_CONTEXT + canonical_json(self.body())

    def to_line(self, old: Ed25519PrivateKey, new: Ed25519PrivateKey) -> bytes:
        signed = self.signed_bytes()
        line = {
            "rotation": self.body(),
            "signature": base64.b64encode(old.sign(signed)).decode("ascii"),
            "signature_new": base64.b64encode(new.sign(signed)).decode("ascii"),
        }
        return canonical_json(line) + b"\n"


@dataclass(frozen=True)
class SignedRotation:
    rotation: KeyRotation
    signature: bytes
    signature_new: bytes

    def problem(self) -> str | None:
        """None when both keys signed this rotation; else why not."""
        signed = self.rotation.signed_bytes()
        for name, key, signature in (
            ("old", self.rotation.from_key, self.signature),
            ("new", self.rotation.to_key, self.signature_new),
        ):
            try:
                key.verify(signature, signed)
            except InvalidSignature:
                return f"the {name} key's signature of the key rotation does not verify"
        return None


CheckpointLine = tuple[Checkpoint, bytes]


def parse_line(line: bytes) -> CheckpointLine | SignedRotation:
    """A line of ``checkpoints.jsonl``: a checkpoint with its signature, or a key rotation."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointFormatError("not valid JSON") from None
    if not isinstance(obj, dict) or "rotation" not in obj:
        return parse_checkpoint(line)
    body = obj["rotation"]
    if not isinstance(body, dict) or body.get("version") != ROTATION_VERSION:
        raise CheckpointFormatError("not a key rotation of a known version")
    size, head, time = body.get("size"), body.get("head"), body.get("time")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(time, str):
        raise CheckpointFormatError("key rotation without a valid size or time")
    try:
        head_bytes = bytes.fromhex(str(head))
        from_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(str(body.get("from_key")), validate=True))
        to_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(str(body.get("to_key")), validate=True))
        signature = base64.b64decode(str(obj.get("signature")), validate=True)
        signature_new = base64.b64decode(str(obj.get("signature_new")), validate=True)
    except (ValueError, binascii.Error):
        raise CheckpointFormatError("key rotation with a malformed head, key or signature") from None
    if len(head_bytes) != 32:
        raise CheckpointFormatError("key rotation head is not a SHA-256 hash")
    rotation = KeyRotation(size, head_bytes, time, from_key, to_key)
    if body.get("from") != rotation.from_id or body.get("to") != rotation.to_id:
        raise CheckpointFormatError("key rotation names keys other than the ones it carries")
    if rotation.from_id == rotation.to_id:
        raise CheckpointFormatError("key rotation to the same key")
    return SignedRotation(rotation, signature, signature_new)


def newest_key_id(line: bytes) -> tuple[int, str, Checkpoint | None]:
    """For the last line of the checkpoint file: (size it covers, key that signs from now on, the checkpoint if
    it is one). Raises CheckpointFormatError for a malformed line."""
    parsed = parse_line(line)
    if isinstance(parsed, SignedRotation):
        return parsed.rotation.size, parsed.rotation.to_id, None
    checkpoint = parsed[0]
    return checkpoint.size, checkpoint.key_id, checkpoint
