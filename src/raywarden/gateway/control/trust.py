"""``GET /raywarden/v1/ca``: the access CA certificate, for clients that pin its SHA-256 fingerprint.

Public by design: `login` and `join` fetch it before they trust anything, compare its fingerprint with the
one the operator gave them, and only then send a code or token over a connection verified against it.
"""

from __future__ import annotations

from raywarden.gateway.control import ControlHandler, ControlRequest, ControlResponse, ControlServices
from raywarden.pki.certs import fingerprint, load_cert


def handlers(services: ControlServices) -> dict[str, ControlHandler]:
    cert = load_cert(services.state.access_ca_cert)
    pem = services.state.access_ca_cert.read_text()
    body = {"access_ca_pem": pem, "sha256": fingerprint(cert), "trust_domain": services.config.trust_domain}

    async def access_ca(_: ControlRequest) -> ControlResponse:
        return ControlResponse(200, body)

    return {"raywarden.ca": access_ca}
