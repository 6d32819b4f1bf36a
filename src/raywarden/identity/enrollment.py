"""One-time enrollment codes: created by an admin, redeemed once by `login`, stored only as hashes.

A code reads ``KIND:NAME:CODE_ID:SECRET``. The kind and name tell the client which identity to request;
the code id finds the record; the secret (192 random bits) is what proves possession. Only SHA-256 of the
secret is stored: with that much entropy a slow hash adds nothing, and a leaked database reveals no code.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from raywarden.errors import RaywardenError, UsageError
from raywarden.identity.store import IdentityStore, Principal
from raywarden.pki.spiffe import SpiffeId, check_name
from raywarden.secret import Secret

MAX_CODE_FAILURES = 5  # wrong secrets for one code id before the code is void
SOURCE_WINDOW_S = 300.0
MAX_SOURCE_FAILURES = 10  # failed enrollments from one source address per window


@dataclass(frozen=True)
class EnrollmentCode:
    kind: str
    name: str
    code_id: str
    secret: Secret

    def reveal(self) -> str:
        return f"{self.kind}:{self.name}:{self.code_id}:{self.secret.reveal()}"

    def spiffe_id(self, trust_domain: str) -> SpiffeId:
        return SpiffeId(trust_domain, "user" if self.kind == "user" else "sa", self.name)


class EnrollmentRefused(RaywardenError):
    """A code was not accepted. ``reason`` is for the audit log; the caller sees a generic refusal."""

    def __init__(self, reason: str, *, status: int = 401) -> None:
        super().__init__("enrollment refused", hint="ask your administrator for a new enrollment code")
        self.reason = reason
        self.status = status


def parse_code(text: str) -> EnrollmentCode:
    parts = text.strip().split(":")
    if len(parts) != 4 or parts[0] not in ("user", "sa") or not parts[2] or not parts[3]:
        raise UsageError(
            "this is not a raywarden enrollment code",
            hint="codes look like user:NAME:ID:SECRET, as printed by `raywarden user add`",
        )
    check_name(parts[1])
    return EnrollmentCode(parts[0], parts[1], parts[2], Secret(parts[3]))


def hash_secret(secret: Secret) -> str:
    return hashlib.sha256(b"raywarden-enrollment-v1\0" + secret.reveal().encode()).hexdigest()


def create_code(
    store: IdentityStore, principal: Principal, *, ttl_s: float, created_by: str
) -> tuple[EnrollmentCode, float]:
    """A fresh code for ``principal``; returns it (shown once, never stored) and its expiry (epoch s)."""
    if principal.disabled:
        raise UsageError(f"{principal.name} is disabled", hint=f"`raywarden user enable {principal.name}` first")
    code = EnrollmentCode(principal.kind, principal.name, secrets.token_hex(8), Secret(secrets.token_urlsafe(24)))
    expires = time.time() + ttl_s
    store.add_enrollment(code.code_id, hash_secret(code.secret), principal.spiffe_id, expires, created_by=created_by)
    return code, expires


def check_source(store: IdentityStore, source: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    if store.failures_since(f"enroll-source:{source}", now - SOURCE_WINDOW_S) >= MAX_SOURCE_FAILURES:
        raise EnrollmentRefused(f"too many failed enrollments from {source}; try again later", status=429)


def verify_code(store: IdentityStore, code: EnrollmentCode, source: str) -> Principal:
    """Check a presented code without consuming it. Every failure is counted against the source, and a
    wrong secret also against the code. Raises EnrollmentRefused with a precise reason."""
    now = time.time()
    check_source(store, source, now)
    try:
        return _verify(store, code, now)
    except EnrollmentRefused:
        store.record_failure(f"enroll-source:{source}", now)
        raise


def _verify(store: IdentityStore, code: EnrollmentCode, now: float) -> Principal:
    record = store.enrollment(code.code_id)
    if record is None:
        raise EnrollmentRefused(f"unknown enrollment code id {code.code_id[:32]!r}")
    # Constant time: how much of the hash matched must not leak through timing.
    if not Secret(record.code_hash).matches(hash_secret(code.secret)):
        failures = store.enrollment_failed(code.code_id)
        raise EnrollmentRefused(f"wrong secret for enrollment code {code.code_id} (failure {failures})")
    if record.failures >= MAX_CODE_FAILURES:
        raise EnrollmentRefused(f"enrollment code {code.code_id} is locked after {record.failures} wrong secrets")
    if record.used:
        raise EnrollmentRefused(f"enrollment code {code.code_id} was already used (replay)")
    if record.revoked:
        raise EnrollmentRefused(f"enrollment code {code.code_id} was revoked")
    if now >= record.expires_at:
        raise EnrollmentRefused(f"enrollment code {code.code_id} expired")
    principal = store.get(record.spiffe_id)
    if principal is None:
        raise EnrollmentRefused(f"enrollment code {code.code_id} belongs to unknown principal {record.spiffe_id}")
    if principal.disabled:
        raise EnrollmentRefused(f"enrollment code {code.code_id} belongs to disabled principal {record.spiffe_id}")
    return principal


def consume(store: IdentityStore, code: EnrollmentCode) -> None:
    """Single use, atomically: of two concurrent redemptions only one gets past this."""
    if not store.consume_enrollment(code.code_id):
        raise EnrollmentRefused(f"enrollment code {code.code_id} was already used (concurrent replay)")
