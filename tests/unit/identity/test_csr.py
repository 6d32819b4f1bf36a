"""CSRs: built on the client, checked strictly by the gateway."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from raywarden.errors import PKIError
from raywarden.pki.csr import build_csr, read_csr
from raywarden.pki.keys import generate_private_key
from raywarden.pki.spiffe import SpiffeId

pytestmark = pytest.mark.unit
ALICE = SpiffeId("td", "user", "alice")


def _csr(key: ec.EllipticCurvePrivateKey, sans: list[x509.GeneralName] | None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_roundtrip() -> None:
    key = generate_private_key()
    spiffe, public = read_csr(build_csr(key, ALICE))
    assert spiffe == ALICE and public.public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"not a csr", "not a PEM"),
        (lambda: _csr(ec.generate_private_key(ec.SECP384R1()), [x509.UniformResourceIdentifier(str(ALICE))]), "P-256"),
        (lambda: _csr(generate_private_key(), None), "no subject alternative name"),
        (
            lambda: _csr(generate_private_key(), [x509.UniformResourceIdentifier(str(ALICE)), x509.DNSName("evil")]),
            "exactly one",
        ),
        (lambda: _csr(generate_private_key(), [x509.UniformResourceIdentifier("https://evil")]), "SPIFFE"),
        (lambda: b"x" * 20000, "too large"),
    ],
)
def test_refusals(make: object, message: str) -> None:
    with pytest.raises(PKIError, match=message):
        read_csr(make())  # type: ignore[operator]
