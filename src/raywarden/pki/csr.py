"""Certificate signing requests: built by `login` and renewal on the user's machine, checked by the gateway.

The private key never leaves the machine that generated it; the CSR carries the public key and the SPIFFE
ID asked for, and is signed by the key to prove possession.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from raywarden.errors import PKIError
from raywarden.pki.spiffe import SpiffeId

MAX_CSR_BYTES = 16 * 1024


def build_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.name or spiffe_id.kind)]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def read_csr(pem: str | bytes) -> tuple[SpiffeId, ec.EllipticCurvePublicKey]:
    """The SPIFFE ID a CSR asks for and its public key; raises PKIError unless the CSR is well-formed,
    self-signed by its key, P-256, and names exactly one SPIFFE ID."""
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > MAX_CSR_BYTES:
        raise PKIError("certificate signing request too large")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise PKIError("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise PKIError("the CSR's signature does not verify (no proof of possession of the key)")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise PKIError("only ECDSA P-256 keys are accepted", hint="generate the key with curve P-256")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("the CSR carries no subject alternative name") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(list(san)) != 1:
        raise PKIError("the CSR must name exactly one SPIFFE ID and nothing else")
    return SpiffeId.parse(uris[0]), key
