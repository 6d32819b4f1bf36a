"""``GET /raywarden/v1/ca``: the access CA certificate, for clients that pin its SHA-256 fingerprint.

Public by design: `login` and `join` fetch it before they trust anything, compare its fingerprint with the
one the operator gave them, and only then send a code or token over a connection verified against it. After
a CA rotation it also carries the rollover statements, each signed by the CA before, so that a client pinning
an older CA can verify its way to the current one (pki/rollover.py, pki/trust.py).
"""

from __future__ import annotations

import threading
from typing import Any

from raywarden.gateway.control import ControlHandler, ControlRequest, ControlResponse, ControlServices
from raywarden.pki.trust import answer_stamp, trust_answer


def handlers(services: ControlServices) -> dict[str, ControlHandler]:
    state, trust_domain = services.state, services.config.trust_domain
    lock = threading.Lock()
    cached: dict[str, Any] = {"stamp": None, "body": None}

    def current() -> dict[str, Any]:
        # Anonymous and cheap: answered from a copy until a rotation changes the files behind it.
        stamp = answer_stamp(state)
        with lock:
            if cached["stamp"] != stamp:
                cached["body"], cached["stamp"] = trust_answer(state, trust_domain), stamp
            body: dict[str, Any] = cached["body"]
        return body

    current()  # a missing or unreadable CA fails the gateway's start, not the first request

    async def access_ca(_: ControlRequest) -> ControlResponse:
        return ControlResponse(200, current())

    return {"raywarden.ca": access_ca}
