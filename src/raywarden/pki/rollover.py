"""Rollover statements: a CA, with its own key, names its successor, so that whoever pins the old CA can
learn the new one without trusting the network.

raywarden's CAs have ``path_length=0`` and cannot cross-sign (a cross-signed CA would need ``path_length=1``,
weakening "this CA signs leaves only"). Instead both CAs sign a statement::

    {"rollover": {"version": 1, "role": "access", "old_ca_pem": ..., "new_ca_pem": ..., "issued_at": ...,
                  "overlap_until": ...}, "signature": "<by the OLD CA key>", "signature_new": "<by the NEW one>"}

over ``b"raywarden ca rollover v1\\n" + canonical_json(rollover)`` (ECDSA P-256, SHA-256, base64). A client that
trusts a CA follows the chain of statements forward from it, each checked with the CA it already trusts, up to
the current CA. The new CA's signature lets a client that pins the new CA trust the old one too while the
overlap lasts (the gateway may still present a certificate from it), and never a CA the new one did not name.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from raywarden.audit.record import canonical_json
from raywarden.errors import PKIError
from raywarden.pki.ca_keys import CertificateAuthority, Role
from raywarden.pki.certs import cert_pem, fingerprint

ROLLOVER_VERSION = 1
ROLLOVER_CONTEXT = b"raywarden ca rollover v1\n"
# A chain longer than this is refused outright: no cluster rotates a CA a hundred times, an attacker might.
MAX_CHAIN = 100
MAX_PEM_CHARS = 8192


@dataclass(frozen=True)
class Rollover:
    """One verified-or-to-verify statement: ``old`` hands over to ``new``."""

    role: Role
    old: x509.Certificate
    new: x509.Certificate
    issued_at: str
    overlap_until: str
    signature: bytes
    signature_new: bytes

    @property
    def old_sha256(self) -> str:
        return fingerprint(self.old)

    @property
    def new_sha256(self) -> str:
        return fingerprint(self.new)

    def body(self) -> dict[str, Any]:
        return {
            "issued_at": self.issued_at,
            "new_ca_pem": cert_pem(self.new).decode("ascii"),
            "old_ca_pem": cert_pem(self.old).decode("ascii"),
            "overlap_until": self.overlap_until,
            "role": self.role,
            "version": ROLLOVER_VERSION,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "rollover": self.body(),
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "signature_new": base64.b64encode(self.signature_new).decode("ascii"),
            # For people reading the file; never trusted (recomputed from the certificates).
            "old_sha256": self.old_sha256,
            "new_sha256": self.new_sha256,
        }


def make_rollover(old: CertificateAuthority, new: CertificateAuthority, overlap_until: dt.datetime) -> Rollover:
    """The statement, signed by both CAs, that ``new`` succeeds ``old``."""
    unsigned = Rollover(old.role, old.certificate, new.certificate, _iso(_now()), _iso(overlap_until), b"", b"")
    body = canonical_json(unsigned.body())
    return dataclasses.replace(
        unsigned,
        signature=old.sign_statement(ROLLOVER_CONTEXT, body),
        signature_new=new.sign_statement(ROLLOVER_CONTEXT, body),
    )


def parse_rollover(value: object) -> Rollover:
    """A statement as found in a file or an answer; its signature is checked by ``verify_rollover``."""
    if not isinstance(value, dict) or not isinstance(value.get("rollover"), dict):
        raise PKIError("a CA rollover statement is malformed (no rollover object)")
    body, signature, signature_new = value["rollover"], value.get("signature"), value.get("signature_new")
    if body.get("version") != ROLLOVER_VERSION or body.get("role") not in ("access", "internal"):
        raise PKIError(f"a CA rollover statement has an unknown version or role ({body.get('version')!r})")
    fields = [body.get(k) for k in ("old_ca_pem", "new_ca_pem", "issued_at", "overlap_until")]
    if not all(isinstance(f, str) and len(f) <= MAX_PEM_CHARS for f in fields):
        raise PKIError("a CA rollover statement is malformed (missing or oversized fields)")
    if not isinstance(signature, str) or not isinstance(signature_new, str):
        raise PKIError("a CA rollover statement lacks a signature")
    try:
        old = x509.load_pem_x509_certificate(str(body["old_ca_pem"]).encode())
        new = x509.load_pem_x509_certificate(str(body["new_ca_pem"]).encode())
        raw_old = base64.b64decode(signature, validate=True)
        raw_new = base64.b64decode(signature_new, validate=True)
    except (ValueError, binascii.Error):
        raise PKIError("a CA rollover statement holds an unreadable certificate or signature") from None
    return Rollover(body["role"], old, new, str(body["issued_at"]), str(body["overlap_until"]), raw_old, raw_new)


def verify_rollover(statement: Rollover, trusted_old: x509.Certificate, trust_domain: str) -> x509.Certificate:
    """Check that ``trusted_old`` (a CA we already trust) handed over in ``statement``; return the successor."""
    if statement.old_sha256 != fingerprint(trusted_old):
        raise PKIError("a CA rollover statement is about another CA than the one trusted here")
    _check_signatures(statement, trusted_old)
    check_ca_certificate(statement.new, statement.role, trust_domain)
    return statement.new


def predecessors(
    current: x509.Certificate, statements: Sequence[Rollover], *, role: Role, trust_domain: str
) -> list[x509.Certificate]:
    """The CAs that ``current`` (a CA we trust) named as its predecessor by signing their statement: during an
    overlap the gateway may still present a certificate from one of them."""
    found = []
    for statement in statements:
        if statement.role != role or statement.new_sha256 != fingerprint(current):
            continue
        try:
            _check_signatures(statement, statement.old)
            check_ca_certificate(statement.old, role, trust_domain)
        except PKIError:
            continue
        found.append(statement.old)
    return found


def _check_signatures(statement: Rollover, old: x509.Certificate) -> None:
    signed = ROLLOVER_CONTEXT + canonical_json(statement.body())
    for ca, signature in ((old, statement.signature), (statement.new, statement.signature_new)):
        public_key = ca.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PKIError("a CA in a rollover statement does not have an ECDSA key")
        try:
            public_key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise PKIError(
                "a CA rollover statement is not signed by the CAs it names",
                hint="someone may be intercepting the connection; nothing was trusted or sent",
            ) from None


def check_ca_certificate(cert: x509.Certificate, role: Role, trust_domain: str) -> None:
    """A raywarden CA of this trust domain: self-signed, a CA that signs leaves only, currently valid."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("a successor CA lacks basic constraints or its trust domain") from None
    if not constraints.ca or constraints.path_length != 0:
        raise PKIError("a successor CA must be a CA that signs leaf certificates only (path length 0)")
    if san.get_values_for_type(x509.UniformResourceIdentifier) != [f"spiffe://{trust_domain}"]:
        raise PKIError(f"a successor CA names another trust domain than {trust_domain}")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(f"the successor {role} CA is not a valid self-signed certificate") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PKIError(f"the successor {role} CA is not valid now (check this machine's clock)")


def follow_chain(
    trusted: Iterable[x509.Certificate],
    statements: Sequence[Rollover],
    target_sha256: str,
    *,
    role: Role,
    trust_domain: str,
) -> list[x509.Certificate]:
    """From a CA in ``trusted``, follow verified statements to the CA with fingerprint ``target_sha256``.

    Returns the path, the trusted CA first and the target last (only the target when it is trusted already).
    Raises PKIError when no verified chain leads there: the answer is then not to be believed.
    """
    if len(statements) > MAX_CHAIN:
        raise PKIError("too many CA rollover statements")
    known = {fingerprint(c): c for c in trusted}
    if target_sha256 in known:
        return [known[target_sha256]]
    by_old: dict[str, list[Rollover]] = {}
    for statement in statements:
        if statement.role == role:
            by_old.setdefault(statement.old_sha256, []).append(statement)
    for start in known.values():
        path = [start]
        seen = {fingerprint(start)}
        while True:
            step = by_old.get(fingerprint(path[-1]), [])
            if len(step) != 1:
                break  # no successor, or a fork: the old key signed two successors and neither is believed
            new = verify_rollover(step[0], path[-1], trust_domain)
            if fingerprint(new) in seen:
                break
            path.append(new)
            seen.add(fingerprint(new))
            if fingerprint(new) == target_sha256:
                return path
    raise PKIError(
        f"no CA rollover statement leads from the CA trusted here to the gateway's CA {target_sha256}",
        hint="if the cluster's CA was replaced without a rollover (after a compromise), get the new "
        "fingerprint from your administrator and log in again with it",
    )


def statements_to_json(statements: Sequence[Rollover]) -> str:
    return json.dumps([s.to_json() for s in statements], indent=2) + "\n"


def statements_from_json(text: str) -> list[Rollover]:
    try:
        values = json.loads(text)
    except ValueError:
        raise PKIError("the CA rollover file is not JSON") from None
    if not isinstance(values, list):
        raise PKIError("the CA rollover file is not a list of statements")
    return [parse_rollover(v) for v in values]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
