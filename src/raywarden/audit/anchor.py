"""Exported heads: a signed checkpoint kept off the host, so that a later rewrite of the log is detected even by
someone who took over the host and its audit key (docs/audit.md "Anchoring the log elsewhere").

The file is JSON: the checkpoint as signed, its signature, the public key that signed it and the sequence
number of the last record it covers. ``verify --against FILE`` requires that record to still be in the log,
with the chain head the file names.
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from raywarden.audit.checkpoint import Checkpoint, CheckpointFormatError, parse_checkpoint, signature_problem
from raywarden.audit.keys import audit_key_fingerprint, audit_public_key_pem
from raywarden.audit.record import canonical_json
from raywarden.errors import ConfigError

EXPORT_FORMAT = "raywarden-audit-head/1"
MAX_EXPORT_BYTES = 64 * 1024


@dataclass(frozen=True)
class ExportedHead:
    checkpoint: Checkpoint
    public_key: Ed25519PublicKey
    exported_at: str
    path: Path | None = None

    @property
    def seq(self) -> int:
        """The sequence number of the last record the head covers."""
        return self.checkpoint.size - 1

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"the head exported at {self.exported_at}{where}, signed {self.checkpoint.time}, through seq {self.seq}"


def export_document(checkpoint: Checkpoint, key: Ed25519PrivateKey, *, trust_domain: str) -> dict[str, Any]:
    """The JSON document ``audit checkpoint --export`` writes. The signature is the one in checkpoints.jsonl
    (Ed25519 signatures are deterministic)."""
    line = json.loads(checkpoint.to_line(key))
    return {
        "format": EXPORT_FORMAT,
        "seq": checkpoint.size - 1,
        "checkpoint": line["checkpoint"],
        "signature": line["signature"],
        "public_key": audit_public_key_pem(key),
        "key_id": audit_key_fingerprint(key),
        "trust_domain": trust_domain,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
    }


def load_exported_head(path: Path) -> ExportedHead:
    """Read and check an exported head: its format, and its signature by the public key it carries."""
    try:
        raw = path.read_bytes()[: MAX_EXPORT_BYTES + 1]
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", hint="pass the file `audit checkpoint --export` wrote"
        ) from None
    if len(raw) > MAX_EXPORT_BYTES:
        raise ConfigError(f"{path} is too large to be an exported head", hint="pass the file `audit checkpoint` wrote")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not JSON", hint="pass the file `audit checkpoint --export` wrote") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{path} is not an exported audit head ({EXPORT_FORMAT})", hint="check the file")
    try:
        line = canonical_json({"checkpoint": doc["checkpoint"], "signature": doc["signature"]})
        checkpoint, signature = parse_checkpoint(line)
        key = serialization.load_pem_public_key(str(doc["public_key"]).encode())
    except (KeyError, TypeError, ValueError, CheckpointFormatError, binascii.Error) as exc:
        raise ConfigError(f"{path} is malformed: {exc}", hint="use an unmodified copy of the exported file") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} names a public key that is not Ed25519", hint="use an unmodified copy")
    problem = signature_problem(checkpoint, signature, key)
    if problem is not None or doc.get("seq") != checkpoint.size - 1 or checkpoint.size < 1:
        raise ConfigError(
            f"{path} does not verify ({problem or 'seq does not match the checkpoint'})",
            hint="the exported head was altered: use another copy",
        )
    return ExportedHead(checkpoint, key, str(doc.get("exported_at", "?")), path)
