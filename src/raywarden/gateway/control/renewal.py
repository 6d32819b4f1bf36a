"""``POST /raywarden/v1/renew/expired``: a renewable service account renews its expired certificate.

Two calls on one route. With ``certificate_pem`` alone the gateway checks that renewal is possible at all and
answers a single-use challenge (60 s); with ``certificate_pem``, ``csr``, ``challenge`` and ``signature`` (by
the expired certificate's key, pki/possession.py) it issues the new certificate. Renewal is possible only for
a certificate that chains to a trusted access CA, of an enabled service account made renewable by an
administrator (`raywarden sa renewal NAME --grace 7d`), not revoked, issued last to that account, and expired
for less than the account's grace. Presenting a certificate that was renewed already, with its key, means the
key was copied: every certificate and token of the account is revoked and an alert record is written.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from raywarden.errors import PKIError, RaywardenError
from raywarden.gateway.control import ControlRequest, ControlResponse, ControlServices
from raywarden.gateway.tokens import expires_iso
from raywarden.identity.renewal import IssuedCertificate, RenewalStore, RenewedCertificate
from raywarden.pki.certs import serial_hex, spiffe_id_of
from raywarden.pki.csr import read_csr
from raywarden.pki.possession import cert_sha256, load_presented_certificate, possession_message, verify_possession
from raywarden.pki.rotation import issued_by
from raywarden.pki.spiffe import SpiffeId
from raywarden.pki.trust import CaFiles

# Per source address, within the window: failed proofs (bad challenge, bad signature, foreign certificate)...
MAX_FAILURES = 10
# ...and challenges asked for (each is a row in the database until it is pruned).
MAX_CHALLENGES = 30
WINDOW_S = 600.0


@dataclass(frozen=True)
class Issuer:
    """How identity.py issues and answers, shared so that both renewal paths sign and record alike."""

    sign: Callable[[Any, SpiffeId], tuple[x509.Certificate, RenewedCertificate]]
    answer: Callable[[x509.Certificate, str], dict[str, Any]]


class Refused(RaywardenError):
    """A renewal refused: ``public`` for the caller, ``reason`` for the audit log; ``failure`` counts against the
    source address (a wrong proof, not a plain "no")."""

    def __init__(
        self, status: int, public: str, reason: str, hint: str | None = None, *, failure: bool = False
    ) -> None:
        super().__init__(reason, hint=hint)
        self.status, self.public, self.reason, self.failure = status, public, reason, failure


def _new_code_hint(name: str) -> str:
    return (
        f"ask an administrator for a new enrollment code (`raywarden sa code {name}`) and log in again with "
        "`raywarden login URL --code CODE --ca-fingerprint SHA256`"
    )


def _ago(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    return f"{max(seconds // 60, 0)} minutes"


class ExpiredRenewal:
    def __init__(self, services: ControlServices, renewals: RenewalStore, issuer: Issuer) -> None:
        self.services = services
        self.renewals = renewals
        self.issuer = issuer
        self.access = CaFiles(services.state, "access")

    async def handle(self, req: ControlRequest) -> ControlResponse:
        store = self.services.store
        since = time.time() - WINDOW_S
        if store.failures_since(f"renew-expired:{req.source}", since) >= MAX_FAILURES:
            return _refusal(Refused(429, "too many failed renewals from this address; try later", "rate limited"))
        try:
            cert = self._presented(req)
            spiffe, record = self._renewable(cert)
            if "challenge" not in req.json:
                return self._challenge(req, cert, spiffe)
            return await self._renew(req, cert, spiffe, record)
        except Refused as refused:
            if refused.failure:
                store.record_failure(f"renew-expired:{req.source}", time.time())
            return _refusal(refused)

    def _presented(self, req: ControlRequest) -> x509.Certificate:
        try:
            cert = load_presented_certificate(req.json.get("certificate_pem"))
        except PKIError as exc:
            raise Refused(400, exc.message, f"renew-expired: {exc.message}") from None
        if not any(issued_by(cert, ca) for ca in self.access.trusted()):
            raise Refused(
                401,
                "this certificate was not issued by a CA this gateway trusts",
                f"renew-expired: certificate {serial_hex(cert)} does not chain to a trusted access CA",
                "if the cluster's access CA was rotated since, the old CA is no longer trusted: ask an administrator "
                "for a new enrollment code",
                failure=True,
            )
        return cert

    def _renewable(self, cert: x509.Certificate) -> tuple[SpiffeId, IssuedCertificate]:
        """Everything that can be known from the certificate alone (no proof of possession yet)."""
        serial = serial_hex(cert)
        try:
            spiffe = spiffe_id_of(cert)
        except PKIError as exc:
            raise Refused(400, "unusable certificate", f"renew-expired: {exc.message}") from None
        if spiffe.kind != "sa" or spiffe.trust_domain != self.services.config.trust_domain:
            raise Refused(
                403,
                "only service accounts renew expired certificates",
                f"renew-expired: {spiffe} is not a service account of this cluster",
                "people log in again: ask an administrator for a new code (`raywarden user code NAME`)",
            )
        principal = self.services.store.get(str(spiffe))
        record = self.renewals.certificate(serial)
        if principal is None or record is None or record.spiffe_id != str(spiffe):
            raise Refused(
                403,
                "this certificate cannot be renewed",
                f"renew-expired: {serial} unknown",
                _new_code_hint(spiffe.name),
            )
        if principal.disabled or record.revoked:
            why = "disabled" if principal.disabled else "revoked"
            raise Refused(
                403,
                "this certificate cannot be renewed",
                f"renew-expired: {spiffe} {why} ({serial})",
                _new_code_hint(spiffe.name),
            )
        grace = self.renewals.renew_grace(str(spiffe))
        if grace is None:
            raise Refused(
                403,
                f"certificates of service account {spiffe.name} are not renewable after they expire",
                f"renew-expired: {spiffe} is not renewable",
                f"{_new_code_hint(spiffe.name)}; an administrator can allow renewal after expiry with "
                f"`raywarden sa renewal {spiffe.name} --grace 7d`",
            )
        now = dt.datetime.now(dt.timezone.utc)
        late = now - cert.not_valid_after_utc
        if late > grace:
            raise Refused(
                403,
                f"the certificate of service account {spiffe.name} expired {_ago(late)} ago; expired certificates "
                f"of this account renew within {_ago(grace)}",
                f"renew-expired: {serial} expired {late} ago, grace {grace}",
                _new_code_hint(spiffe.name),
            )
        return spiffe, record

    def _challenge(self, req: ControlRequest, cert: x509.Certificate, spiffe: SpiffeId) -> ControlResponse:
        store = self.services.store
        if store.failures_since(f"renew-challenge:{req.source}", time.time() - WINDOW_S) >= MAX_CHALLENGES:
            raise Refused(429, "too many renewal challenges from this address; try later", "challenges rate limited")
        store.record_failure(f"renew-challenge:{req.source}", time.time())
        nonce, expires = self.renewals.new_challenge(cert_sha256(cert), req.source)
        return ControlResponse(
            200,
            {"challenge": nonce.reveal(), "expires_at": expires_iso(expires), "trust_domain": spiffe.trust_domain},
            {"event": "renew_expired.challenge", "principal": str(spiffe), "serial": serial_hex(cert)},
        )

    async def _renew(
        self, req: ControlRequest, cert: x509.Certificate, spiffe: SpiffeId, record: IssuedCertificate
    ) -> ControlResponse:
        challenge, signature, csr_text = req.json.get("challenge"), req.json.get("signature"), req.json.get("csr")
        if not isinstance(challenge, str) or not isinstance(signature, str) or not isinstance(csr_text, str):
            raise Refused(400, "a renewal needs certificate_pem, csr, challenge and signature", "renew-expired: fields")
        if not all(0 < len(v) <= 16384 for v in (challenge, signature, csr_text)):
            raise Refused(400, "challenge, signature or csr is empty or too long", "renew-expired: field sizes")
        serial = serial_hex(cert)
        if not self.renewals.consume_challenge(challenge, cert_sha256(cert)):
            raise Refused(
                401,
                "the renewal challenge is unknown, expired or used",
                f"renew-expired: bad challenge for {serial}",
                "ask for a new challenge",
                failure=True,
            )
        message = possession_message(cert, csr_text, challenge, self.services.config.trust_domain)
        try:
            verify_possession(cert, message, signature)
        except PKIError:
            raise Refused(
                401, "proof of possession failed", f"renew-expired: bad signature for {serial}", failure=True
            ) from None
        if record.superseded_by is not None:
            return await self.reuse(str(spiffe), serial, record.superseded_by, req.source)
        if self.renewals.latest_serial(str(spiffe)) != serial:
            raise Refused(
                403,
                "a newer certificate was issued to this service account; only the newest one renews",
                f"renew-expired: {serial} is not the newest certificate of {spiffe}",
                _new_code_hint(spiffe.name),
            )
        try:
            asked, public_key = read_csr(csr_text)
        except PKIError as exc:
            raise Refused(
                400, f"unusable certificate signing request: {exc.message}", f"bad CSR: {exc.message}"
            ) from None
        if asked != spiffe:
            raise Refused(403, "a certificate can only be renewed for its own identity", f"CSR asks for {asked}")
        if public_key.public_numbers() == cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise Refused(400, "the renewal must use a new key", "renew-expired: CSR reuses the expired key")
        new, renewed = self.issuer.sign(public_key, spiffe)
        # Not recorded unless still allowed: a certificate the store does not know is refused everywhere.
        why_not = self.renewals.record_renewal(serial, renewed)
        if why_not == "renewed":
            return await self.reuse(str(spiffe), serial, "a concurrent renewal", req.source)
        if why_not is not None:
            raise Refused(
                403,
                "renewal refused",
                f"renew-expired: {spiffe} or its certificate {serial} was {why_not} during the renewal",
                _new_code_hint(spiffe.name),
            )
        await self.services.audit.append_async(
            {
                "kind": "identity",
                "event": "cert.renew_expired",
                "principal": str(spiffe),
                "actor": str(spiffe),
                "source": req.source,
                "previous_serial": serial,
                "expired_at": cert.not_valid_after_utc.isoformat(),
                "serial": serial_hex(new),
                "not_after": new.not_valid_after_utc.isoformat(),
            }
        )
        return ControlResponse(
            200, self.issuer.answer(new, str(spiffe)), {"serial": serial_hex(new), "previous_serial": serial}
        )

    async def reuse(self, spiffe_id: str, serial: str, superseded_by: str, source: str) -> ControlResponse:
        """A certificate that was renewed already came back with its key: revoke the account's credentials."""
        counts = self.renewals.revoke_all_credentials(spiffe_id, f"reuse of renewed certificate {serial}")
        await self.services.audit.append_async(
            {
                "kind": "identity",
                "event": "cert.reuse",
                "alert": True,
                "principal": spiffe_id,
                "actor": spiffe_id,
                "source": source,
                "serial": serial,
                "superseded_by": superseded_by,
                "revoked_certificates": counts["certificates"],
                "revoked_jtis": counts["tokens"],
            }
        )
        name = SpiffeId.parse(spiffe_id).name
        return _refusal(
            Refused(
                403,
                "this certificate was renewed already; presenting it again means its key was copied, so every "
                f"certificate and token of {name} is now revoked",
                f"reuse of renewed certificate {serial} (renewed into {superseded_by})",
                _new_code_hint(name),
            )
        )


def _refusal(refused: Refused) -> ControlResponse:
    body: dict[str, Any] = {"error": refused.public}
    if refused.hint:
        body["hint"] = refused.hint
    return ControlResponse(refused.status, body, {"reason": refused.reason})
