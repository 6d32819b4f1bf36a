"""A person's copied key must not outlive `raywarden revoke cert SERIAL`, which docs/identities.md gives as
"the answer to a copied key".

Renewal (`POST /raywarden/v1/renew`) issues a new certificate for a new key to whoever presents the current
one. A person's certificate that was renewed already is renewed again on request (the reuse check is made for
renewable service accounts only), so the holder of a copied key gets a certificate of their own that no serial
the owner or the administrator knows names; and revoking the copied certificate's serial leaves every
certificate renewed from it in force. Offline gateway, real identity store and CAs.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from raywarden.identity.admin import IdentityAdmin
from raywarden.pki.csr import build_csr
from raywarden.pki.keys import generate_private_key
from raywarden.pki.spiffe import SpiffeId
from tests.unit.gateway.conftest import Gateway, spiffe

pytestmark = pytest.mark.unit

RENEW = "/raywarden/v1/renew"


def _renew(gateway: Gateway, der: bytes, name: str) -> tuple[int, dict[str, Any]]:
    csr = build_csr(generate_private_key(), SpiffeId.parse(spiffe(name))).decode()
    with gateway.with_certificate(der):
        resp = gateway.client.post(RENEW, json={"csr": csr})
    return resp.status_code, resp.json()


def _der(answer: dict[str, Any]) -> bytes:
    cert = x509.load_pem_x509_certificate(answer["certificate_pem"].encode())
    return cert.public_bytes(serialization.Encoding.DER)


def _whoami(gateway: Gateway, der: bytes) -> int:
    with gateway.with_certificate(der):
        return gateway.client.get("/raywarden/v1/whoami").status_code


def test_a_renewed_certificate_is_not_renewed_a_second_time(gateway: Gateway) -> None:
    copied = gateway.certificate("hank")
    status, _owners = _renew(gateway, copied, "hank")  # the owner renews at half life
    assert status == 200
    status, answer = _renew(gateway, copied, "hank")  # later, the copy of the old key renews too
    assert status != 200, f"a second renewal of one certificate was granted: {answer.get('serial')}"


def test_revoking_a_copied_certificate_ends_what_was_renewed_from_it(gateway: Gateway) -> None:
    copied = gateway.certificate("ivy")
    status, thiefs = _renew(gateway, copied, "ivy")  # the copy renews first, with a key only the thief has
    assert status == 200
    serial = x509.load_der_x509_certificate(copied).serial_number
    IdentityAdmin(gateway.state).revoke_cert(format(serial, "x"), "key copied")
    assert _whoami(gateway, copied) == 401
    assert _whoami(gateway, _der(thiefs)) == 401, "the certificate renewed from the revoked one is still accepted"
