"""``POST /raywarden/v1/signin-link``: a one-time browser sign-in link for the caller's own identity.

People with their certificate only (the route's Cedar permit asks for it, and the handler checks again, also
for admins): a bearer token or a browser session never mints a session, a service account never gets one.
The link carries a code that works once, for ``signin_link_seconds`` (5 min by default); only its hash is
stored.
"""

from __future__ import annotations

from urllib.parse import quote

from raywarden.gateway.control import ControlHandler, ControlRequest, ControlResponse, ControlServices
from raywarden.gateway.tokens import expires_iso
from raywarden.identity.sessions import SessionStore


def handlers(services: ControlServices) -> dict[str, ControlHandler]:
    sessions = SessionStore(services.state.identity_db, services.store)
    ttl = services.config.signin_link_seconds

    async def signin_link(req: ControlRequest) -> ControlResponse:
        identity = req.identity
        if identity is None or identity.auth_method != "certificate":
            method = identity.auth_method if identity else "no"
            return ControlResponse(
                403,
                {"error": "sign-in links are issued to certificate holders only"},
                {"reason": f"sign-in link requested with {method} authentication"},
            )
        if identity.kind != "user":
            # Service accounts are for automation; even an admin one gets no browser session.
            return ControlResponse(
                403,
                {"error": "sign-in links are issued to people only"},
                {"reason": f"sign-in link requested by {identity.kind} {identity.name}"},
            )
        code_id, code, expires = sessions.create_link(identity.spiffe_id, "certificate", identity.credential_id, ttl)
        await services.audit.append_async(
            {
                "kind": "identity",
                "event": "signin_link.issue",
                "principal": identity.spiffe_id,
                "actor": identity.spiffe_id,
                "source": req.source,
                "code_id": code_id,
                "serial": identity.credential_id,
                "expires_at": expires_iso(expires),
            }
        )
        return ControlResponse(
            200,
            {
                "path": f"/ui/signin?code={quote(code.reveal(), safe='.')}",
                "code_id": code_id,
                "expires_at": expires_iso(expires),
                "identity": identity.spiffe_id,
            },
            {"code_id": code_id},
        )

    return {"identity.signin_link": signin_link}
