"""The only module that creates, loads or uses a CA private key.

Two authorities exist per cluster (ARCHITECTURE.md, principle 4): the *access* CA signs people, service
accounts and the gateway; the *internal* CA signs Ray node certificates only. Ray accepts any certificate
from its CA, so keeping the roots apart is what stops a user certificate from reaching Ray's gRPC ports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raywarden.errors import PKIError
from raywarden.files import read_private, write_private, write_public
from raywarden.pki.certs import fingerprint
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId

Role = Literal["access", "internal"]
# Leaves start a little in the past so that small clock differences between hosts do not reject them.
BACKDATE = dt.timedelta(minutes=5)
# In the pki folder: held shared while a CA's certificate and key are read, exclusive while a rotation
# swaps them (pki/rotation.py), so that no signer ever reads a certificate with the other CA's key.
CA_LOCK_NAME = ".ca.lock"


_held = threading.local()  # pki folders this thread holds exclusively: reads inside need no second lock


@contextlib.contextmanager
def ca_lock(pki_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """``flock`` on the pki folder's lock file; without a writable folder (a read-only copy) no lock is taken."""
    held: set[Path] = getattr(_held, "dirs", set())
    if pki_dir.resolve() in held:
        yield
        return
    try:
        fd = os.open(pki_dir / CA_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        if exclusive:
            raise PKIError(f"cannot lock {pki_dir} for a CA change", hint="run as the cluster's operator") from None
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if exclusive:
            _held.dirs = held | {pki_dir.resolve()}
        yield
    finally:
        if exclusive:
            _held.dirs = held
        os.close(fd)  # closing the descriptor releases the lock


def destroy_ca_key(path: Path) -> None:
    """Overwrite a retired CA key in place, then remove it: nothing should sign with it again."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    with path.open("r+b") as handle:
        handle.write(b"\0" * size)
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs only; a leaf signs TLS handshakes only (ECDSA: no key encipherment)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class CertificateAuthority:
    role: Role
    trust_domain: str
    certificate: x509.Certificate
    _key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:  # never show the key
        return f"CertificateAuthority(role={self.role!r}, trust_domain={self.trust_domain!r})"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate (what clients pin and `raywarden ca status` shows)."""
        return fingerprint(self.certificate)

    @classmethod
    def create(cls, role: Role, trust_domain: str, *, years: int) -> CertificateAuthority:
        key = generate_private_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raywarden"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"raywarden {role} CA ({trust_domain})"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=365 * years))
            # pathlen 0: this CA signs leaves only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            # X.509-SVID section 4.1: a signing certificate may carry the trust domain's SPIFFE ID.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(role, trust_domain, cert, key)

    @classmethod
    def load(cls, role: Role, trust_domain: str, cert_path: Path, key_path: Path) -> CertificateAuthority:
        with ca_lock(cert_path.parent, exclusive=False):
            try:
                cert_bytes = cert_path.read_bytes()
            except FileNotFoundError:
                raise PKIError(f"{role} CA certificate {cert_path} is missing", hint="run `raywarden init`") from None
            key_bytes = read_private(key_path)
        try:
            cert = x509.load_pem_x509_certificate(cert_bytes)
        except ValueError:
            raise PKIError(f"{cert_path} is not a PEM certificate", hint="restore it from a backup") from None
        key = serialization.load_pem_private_key(key_bytes, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{key_path} is not an ECDSA key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise PKIError(f"{key_path} does not belong to {cert_path}", hint="restore the matching key")
        return cls(role, trust_domain, cert, key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        write_private(key_path, private_key_pem(self._key))
        write_public(cert_path, self.certificate.public_bytes(serialization.Encoding.PEM))

    def sign_statement(self, context: bytes, body: bytes) -> bytes:
        """ECDSA (SHA-256) over ``context + body``: a CA speaking about its successor (pki/rollover.py).

        The context string keeps such a signature from ever passing for a certificate's or a CRL's."""
        if not context.endswith(b"\n") or b"\n" in context[:-1]:
            raise PKIError("a statement's context is one line ending in a newline")
        return self._key.sign(context + body, ec.ECDSA(hashes.SHA256()))

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        spiffe_id: SpiffeId,
        *,
        lifetime: dt.timedelta,
        server: bool = False,
        client: bool = True,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> x509.Certificate:
        """Sign an X.509-SVID leaf: exactly one URI SAN (the SPIFFE ID), critical key usage, no CA bit."""
        if spiffe_id.trust_domain != self.trust_domain:
            raise PKIError(f"{spiffe_id} is outside trust domain {self.trust_domain}")
        if (self.role == "internal") != (spiffe_id.kind == "node"):
            # Principle 4: node certificates come from the internal CA and nothing else does.
            raise PKIError(f"the {self.role} CA does not sign {spiffe_id.kind} certificates")
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise PKIError("only ECDSA P-256 keys are accepted", hint="generate the key with curve P-256")
        now = _now()
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        purposes = ((ExtendedKeyUsageOID.SERVER_AUTH, server), (ExtendedKeyUsageOID.CLIENT_AUTH, client))
        usages = [oid for oid, wanted in purposes if wanted]
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        sans += [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.name or spiffe_id.kind)])
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
