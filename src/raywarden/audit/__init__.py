"""Tamper-evident, durable audit log: hash-chained records, signed checkpoints, offline verification.

See docs/audit.md for the file format, what verification proves and how the log fails closed.
"""

from __future__ import annotations

from raywarden.audit.checkpoint import Checkpoint
from raywarden.audit.errors import AuditRecordError, AuditUnavailable, AuditVerificationError
from raywarden.audit.keys import (
    audit_key_fingerprint,
    audit_public_key_pem,
    load_audit_public_key,
    load_or_create_audit_key,
)
from raywarden.audit.redact import redact
from raywarden.audit.verify import VerifyReport, verify_log
from raywarden.audit.writer import AuditLog

__all__ = [
    "AuditLog",
    "AuditRecordError",
    "AuditUnavailable",
    "AuditVerificationError",
    "Checkpoint",
    "VerifyReport",
    "audit_key_fingerprint",
    "audit_public_key_pem",
    "load_audit_public_key",
    "load_or_create_audit_key",
    "redact",
    "verify_log",
]
