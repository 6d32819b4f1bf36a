"""A person's copied key must not outlive `raywarden revoke cert SERIAL`, which docs/identities.md gives as
"the answer to a copied key".

Renewal (`POST /raywarden/v1/renew`) issues a new certificate for a new key to whoever presents the current
one. A person's certificate that was renewed already is renewed again on request (the reuse check is made for
renewable service accounts only), so the holder of a copied key gets a certificate of their own that no serial
the owner or the administrator knows names; and revoking the copied certificate's serial leaves every
certificate renewed from it in force. Offline gateway, real identity store and CAs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from raywarden.cli.identity import register
from raywarden.identity.admin import IdentityAdmin
from raywarden.identity.store import IdentityError
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


def test_the_revoke_command_says_which_renewals_it_revoked(gateway: Gateway) -> None:
    original = gateway.certificate("jane")
    status, first = _renew(gateway, original, "jane")
    assert status == 200
    status, second = _renew(gateway, _der(first), "jane")
    assert status == 200
    serial = format(x509.load_der_x509_certificate(original).serial_number, "x")
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """raywarden (test root)."""

    register(app)
    args = ["revoke", "cert", serial, "--state-dir", str(gateway.state.root), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["revoked_serials"] == [serial, first["serial"], second["serial"]]
    assert answer["revoked_count"] == 3
    assert _whoami(gateway, _der(second)) == 401
    [record] = [r for r in gateway.records() if r.get("event") == "revoke.cert"]
    assert record["revoked_serials"] == answer["revoked_serials"]
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, IdentityError) and "already revoked" in again.exception.message
