"""Self-service identity endpoints: enroll with a one-time code, renew a certificate, get a bearer token.

``POST /raywarden/v1/enroll`` is anonymous (the code in the body is the credential); ``renew`` and ``token``
need a client certificate (a bearer token cannot mint or extend credentials) and a Cedar permit.
``POST /raywarden/v1/renew/expired`` is anonymous too: a renewable service account's expired certificate
cannot pass the TLS handshake, so its key proves possession by signing a single-use challenge instead
(renewal.py). Refusals tell the client little; the audit record says exactly why.
"""

from __future__ import annotations

import time
from typing import Any

from cryptography import x509

from raywarden.errors import PKIError, UsageError
from raywarden.gateway.control import ControlHandler, ControlRequest, ControlResponse, ControlServices
from raywarden.gateway.control.renewal import ExpiredRenewal, Issuer
from raywarden.gateway.tokens import MintingCertificate, TokenAuthority, expires_iso
from raywarden.identity.enrollment import EnrollmentRefused, consume, parse_code, verify_code
from raywarden.identity.renewal import RenewalStore, RenewedCertificate
from raywarden.pki.certs import cert_pem, serial_hex
from raywarden.pki.csr import read_csr
from raywarden.pki.spiffe import SpiffeId
from raywarden.pki.trust import CurrentCA, trust_answer

HINT_CODE = "ask your administrator for a new enrollment code (`raywarden user add` / `user enable`)"


def handlers(services: ControlServices) -> dict[str, ControlHandler]:
    state, config, store, audit = services.state, services.config, services.store, services.audit
    # The current access CA, read again after a rotation (`raywarden ca rotate access`) swaps it.
    access = CurrentCA(state, "access", config.trust_domain)
    tokens = TokenAuthority.for_state(state, config)
    lifetime = config.user_cert_ttl
    renewals = RenewalStore(store)

    def issue(public_key: Any, spiffe: SpiffeId) -> x509.Certificate:
        """Sign with the access CA and record the serial: a certificate the store does not know is refused."""
        ca = access.get()
        cert = ca.issue(public_key, spiffe, lifetime=lifetime)
        store.record_certificate(serial_hex(cert), str(spiffe), cert.not_valid_after_utc, issuer=ca.fingerprint)
        return cert

    def sign(public_key: Any, spiffe: SpiffeId) -> tuple[x509.Certificate, RenewedCertificate]:
        """Sign without recording: a renewal records the certificate only if its transaction still allows it."""
        ca = access.get()
        cert = ca.issue(public_key, spiffe, lifetime=lifetime)
        return cert, RenewedCertificate(serial_hex(cert), str(spiffe), cert.not_valid_after_utc, ca.fingerprint)

    def cert_answer(cert: x509.Certificate, spiffe_id: str) -> dict[str, Any]:
        # Renewals also carry the CA answer, so a client learns of a CA rotation on its next renewal.
        return {**cert_body(cert, spiffe_id), "ca": trust_answer(state, config.trust_domain)}

    async def event(name: str, principal: str, actor: str, source: str, **fields: Any) -> None:
        await audit.append_async(
            {"kind": "identity", "event": name, "principal": principal, "actor": actor, "source": source, **fields}
        )

    async def enroll(req: ControlRequest) -> ControlResponse:
        code_text, csr_text = req.json.get("code"), req.json.get("csr")
        if not isinstance(code_text, str) or not isinstance(csr_text, str):
            return refuse(400, "an enrollment needs a code and a csr", "enrollment body without code or csr")
        try:
            code = parse_code(code_text)
            principal = verify_code(store, code, req.source)
        except UsageError:
            store.record_failure(f"enroll-source:{req.source}", _now())
            return refuse(401, "enrollment refused", "malformed enrollment code", HINT_CODE)
        except EnrollmentRefused as exc:
            return refuse(exc.status, "enrollment refused", exc.reason, HINT_CODE, enrollment_id=code.code_id)
        try:
            spiffe, public_key = read_csr(csr_text)
        except PKIError as exc:
            return refuse(
                400,
                f"unusable certificate signing request: {exc.message}",
                f"bad CSR: {exc.message}",
                enrollment_id=code.code_id,
            )
        if str(spiffe) != principal.spiffe_id:
            store.record_failure(f"enroll-source:{req.source}", _now())
            return refuse(
                403,
                "enrollment refused",
                f"CSR asks for {spiffe} but the code enrolls {principal.spiffe_id}",
                "request the identity the code was made for",
                enrollment_id=code.code_id,
            )
        try:
            consume(store, code)
        except EnrollmentRefused as exc:
            return refuse(401, "enrollment refused", exc.reason, HINT_CODE, enrollment_id=code.code_id)
        cert = issue(public_key, spiffe)
        await event(
            "enroll",
            str(spiffe),
            str(spiffe),
            req.source,
            enrollment_id=code.code_id,
            serial=serial_hex(cert),
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        return ControlResponse(
            200,
            cert_answer(cert, str(spiffe)),
            {"enrolled": str(spiffe), "enrollment_id": code.code_id, "serial": serial_hex(cert)},
        )

    expired = ExpiredRenewal(services, renewals, Issuer(sign, cert_answer))

    async def renew(req: ControlRequest) -> ControlResponse:
        identity = req.identity
        if identity is None or identity.auth_method != "certificate":
            return refuse(
                403,
                "renewal requires your current client certificate",
                f"renewal attempted with {identity.auth_method if identity else 'no'} authentication",
            )
        csr_text = req.json.get("csr")
        if not isinstance(csr_text, str):
            return refuse(400, "a renewal needs a csr", "renewal body without csr")
        try:
            spiffe, public_key = read_csr(csr_text)
        except PKIError as exc:
            return refuse(400, f"unusable certificate signing request: {exc.message}", f"bad CSR: {exc.message}")
        if str(spiffe) != identity.spiffe_id:
            return refuse(
                403,
                "a certificate can only be renewed for its own identity",
                f"renewal CSR asks for {spiffe}, caller is {identity.spiffe_id}",
            )
        previous = identity.credential_id
        # A renewable account's certificate renewed twice means two holders of its key: end both.
        alarm = identity.kind == "sa" and renewals.renew_grace(identity.spiffe_id) is not None
        found = renewals.certificate(previous)
        if found is not None and found.superseded_by is not None:
            if alarm:
                return await expired.reuse(identity.spiffe_id, previous, found.superseded_by, req.source)
            return renewed_already(previous, found.superseded_by)
        cert, renewed = sign(public_key, spiffe)
        why_not = renewals.record_renewal(previous, renewed)
        if why_not == "renewed":  # a concurrent renewal of the same certificate got there first
            if alarm:
                return await expired.reuse(identity.spiffe_id, previous, "a concurrent renewal", req.source)
            return renewed_already(previous, "a concurrent renewal")
        if why_not is not None:  # revoked or disabled after this request authenticated
            return refuse(
                403,
                "renewal refused",
                f"renewal of {previous}: {identity.spiffe_id} or the certificate was {why_not} during the renewal",
                previous_serial=previous,
            )
        await event(
            "cert.renew",
            str(spiffe),
            identity.spiffe_id,
            req.source,
            previous_serial=previous,
            serial=serial_hex(cert),
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        return ControlResponse(
            200, cert_answer(cert, str(spiffe)), {"serial": serial_hex(cert), "previous_serial": previous}
        )

    async def token(req: ControlRequest) -> ControlResponse:
        identity = req.identity
        if identity is None or identity.auth_method != "certificate":
            # A bearer token that could mint bearer tokens would never expire.
            return refuse(
                403,
                "tokens are issued to certificate holders only",
                f"token requested with {identity.auth_method if identity else 'no'} authentication",
            )
        ttl = req.json.get("ttl_seconds")
        if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool)):
            return refuse(400, "ttl_seconds must be a number", "non-numeric ttl_seconds")
        if identity.expires_at is None:  # a verified certificate always has one
            return refuse(500, "token not issued", "certificate identity without an expiry")
        # The token names the certificate and ends with it: revoking the certificate stops the token too.
        minted_with = MintingCertificate(identity.credential_id, identity.expires_at)
        try:
            issued = tokens.issue(identity.spiffe_id, None if ttl is None else float(ttl), minted_with=minted_with)
        except UsageError as exc:
            return refuse(400, exc.message, f"token lifetime refused: {exc.message}")
        store.record_token(issued.jti, identity.spiffe_id, issued.expires_at, issued_by=identity.spiffe_id)
        await event(
            "token.issue",
            identity.spiffe_id,
            identity.spiffe_id,
            req.source,
            jti=issued.jti,
            expires_at=expires_iso(issued.expires_at),
            cert_serial=identity.credential_id,
            capped_by_certificate=issued.capped_by_certificate,
        )
        return ControlResponse(
            200,
            {
                "token": issued.token.reveal(),
                "jti": issued.jti,
                "expires_at": expires_iso(issued.expires_at),
                "token_type": "Bearer",
                "cert_serial": identity.credential_id,
                "capped_by_certificate": issued.capped_by_certificate,
            },
            {"jti": issued.jti},
        )

    return {
        "identity.enroll": enroll,
        "identity.renew": renew,
        "identity.renew_expired": expired.handle,
        "identity.token": token,
    }


def renewed_already(serial: str, superseded_by: str) -> ControlResponse:
    """A certificate is renewed once. Whoever presents it again holds either a copy of its key or a renewal
    whose answer was lost; the lineage renewed from it stays the only one (docs/credentials.md "Renewal")."""
    return refuse(
        409,
        "this certificate was renewed already and cannot be renewed again",
        f"second renewal of certificate {serial} (renewed into {superseded_by})",
        "keep using it until it expires, then ask your administrator for a new code and `raywarden login` again. "
        f"If you did not renew it, its key may have been copied: ask your administrator to run `raywarden revoke "
        f"cert {serial}`, which also revokes every certificate renewed from it",
        alert=True,
        previous_serial=serial,
        superseded_by=superseded_by,
    )


def refuse(status: int, message: str, reason: str, hint: str | None = None, **audit: Any) -> ControlResponse:
    body: dict[str, Any] = {"error": message}
    if hint:
        body["hint"] = hint
    return ControlResponse(status, body, {"reason": reason, **audit})


def cert_body(cert: Any, spiffe_id: str) -> dict[str, Any]:
    return {
        "certificate_pem": cert_pem(cert).decode(),
        "identity": spiffe_id,
        "serial": serial_hex(cert),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _now() -> float:
    return time.time()
