"""Reading certificates: PEM I/O, SPIFFE ID extraction, fingerprints and expiry."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from raywarden.errors import PKIError
from raywarden.pki.spiffe import SpiffeId


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PKIError(f"certificate {path} is missing") from None
    except ValueError:
        raise PKIError(f"{path} is not a PEM certificate") from None


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of an X.509-SVID: its one and only URI SAN (X.509-SVID section 2)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("certificate has no subject alternative name") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PKIError(f"certificate must carry exactly one URI SAN, found {len(uris)}")
    return SpiffeId.parse(uris[0])


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER encoding, as lowercase hex: what `login`/`join` pin with --ca-fingerprint."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def remaining(cert: x509.Certificate, now: dt.datetime | None = None) -> dt.timedelta:
    return cert.not_valid_after_utc - (now or dt.datetime.now(dt.timezone.utc))


def lifetime(cert: x509.Certificate) -> dt.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc
