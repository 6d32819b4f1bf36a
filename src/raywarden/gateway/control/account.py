"""The caller's own account: ``GET /raywarden/v1/whoami`` and ``POST /raywarden/v1/logout``.

``whoami`` says who the gateway takes the caller for, as it decided this very request: identity, groups (the
store's and, for an OIDC person, the mapped ones), how they authenticated and until when that credential is
accepted. ``logout`` revokes the client certificate the request was made with, and optionally one bearer token
of the same identity (``{"jti": "..."}``, the token the CLI keeps next to the certificate). It needs that
certificate (the route's Cedar permit asks for it, and the handler checks again, also for admins): a bearer
token never revokes a certificate. Browser sessions started with the certificate end on their next request.
"""

from __future__ import annotations

import time
from typing import Any

from raywarden.gateway.authn import Identity
from raywarden.gateway.control import ControlHandler, ControlRequest, ControlResponse, ControlServices
from raywarden.gateway.tokens import expires_iso

MAX_JTI = 64


def describe(identity: Identity, trust_domain: str, now: float | None = None) -> dict[str, Any]:
    moment = time.time() if now is None else now
    expires = identity.expires_at
    return {
        "identity": identity.spiffe_id,
        "kind": identity.kind,
        "name": identity.name,
        "groups": list(identity.groups),
        "auth_method": identity.auth_method,
        "credential_id": identity.credential_id,
        "credential_issued_at": expires_iso(identity.issued_at) if identity.issued_at is not None else None,
        "credential_expires_at": expires_iso(expires) if expires is not None else None,
        "credential_seconds_left": int(expires - moment) if expires is not None else None,
        # The certificate a bearer token was minted with: revoking it ends the token too.
        "minted_with_cert_serial": identity.minted_with,
        "trust_domain": trust_domain,
    }


def handlers(services: ControlServices) -> dict[str, ControlHandler]:
    store, audit, trust_domain = services.store, services.audit, services.config.trust_domain

    async def whoami(req: ControlRequest) -> ControlResponse:
        if req.identity is None:  # the route authenticates; an anonymous caller never gets here
            return ControlResponse(401, {"error": "authentication required"}, {"reason": "whoami without identity"})
        return ControlResponse(200, describe(req.identity, trust_domain))

    async def logout(req: ControlRequest) -> ControlResponse:
        identity = req.identity
        if identity is None or identity.auth_method != "certificate":
            method = identity.auth_method if identity else "no"
            return ControlResponse(
                403,
                {
                    "error": "logout revokes the client certificate it is made with: present that certificate",
                    "hint": "`raywarden logout` on the machine that holds the certificate",
                },
                {"reason": f"logout requested with {method} authentication"},
            )
        jti = req.json.get("jti")
        if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI):
            return ControlResponse(
                400, {"error": f"jti must be a token id (a string of at most {MAX_JTI} characters)"}, {}
            )
        owner = store.token_owner(jti) if jti else None
        if owner is not None and owner[0] != identity.spiffe_id:
            # Nothing is revoked: a logout never touches another identity's credentials.
            return ControlResponse(
                403,
                {"error": "that token belongs to another identity; nothing was revoked"},
                {"reason": f"logout named token {jti} of {owner[0]}"},
            )
        serial = identity.credential_id
        store.revoke_certificate(serial, "logout")
        token_revoked = owner is not None and not owner[1] and store.revoke_token(str(jti), "logout")
        event = {
            "kind": "identity",
            "event": "logout",
            "principal": identity.spiffe_id,
            "actor": identity.spiffe_id,
            "source": req.source,
            "serial": serial,
        }
        await audit.append_async({**event, "jti": jti} if token_revoked else event)
        body = {
            "identity": identity.spiffe_id,
            "certificate_serial": serial,
            "certificate_revoked": True,
            "token_id": jti,
            "token_revoked": token_revoked,
        }
        revoked = {"revoked_serial": serial, **({"revoked_jti": jti} if token_revoked else {})}
        return ControlResponse(200, body, revoked)

    return {"identity.whoami": whoami, "identity.logout": logout}
