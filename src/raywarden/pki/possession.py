"""Proof of possession for renewing an expired certificate (``POST /raywarden/v1/renew/expired``).

An expired certificate fails the TLS handshake, so it cannot authenticate the connection. Instead its key
signs a message that binds the certificate, the CSR for its replacement, a single-use challenge from the
gateway and the cluster's trust domain, under a context string of its own (never a TLS or CSR signature).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from raywarden.audit.record import canonical_json
from raywarden.errors import PKIError

POSSESSION_CONTEXT = b"raywarden renew-expired v1\n"
MAX_CERT_BYTES = 16 * 1024


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def possession_message(cert: x509.Certificate, csr_pem: str, challenge: str, trust_domain: str) -> bytes:
    body = {
        "certificate_sha256": cert_sha256(cert),
        "challenge": challenge,
        "csr_sha256": hashlib.sha256(csr_pem.encode()).hexdigest(),
        "trust_domain": trust_domain,
    }
    return POSSESSION_CONTEXT + canonical_json(body)


def sign_possession(key: ec.EllipticCurvePrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def verify_possession(cert: x509.Certificate, message: bytes, signature: str) -> None:
    """Raises PKIError unless ``signature`` over ``message`` verifies with the certificate's key."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PKIError("the certificate's key is not ECDSA")
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message, ec.ECDSA(hashes.SHA256()))
    except (ValueError, binascii.Error, InvalidSignature):
        raise PKIError("the proof of possession does not verify with the certificate's key") from None


def load_presented_certificate(pem: object) -> x509.Certificate:
    if not isinstance(pem, str) or len(pem) > MAX_CERT_BYTES:
        raise PKIError("certificate_pem must be one PEM certificate")
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise PKIError("certificate_pem is not a PEM certificate") from None
