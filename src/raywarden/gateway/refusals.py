"""How a refusal reads to whoever asked: its JSON body, and the status it is sent with.

The body always holds ``error``, ``request_id`` and, when there is one, ``hint``. To a caller who
authenticated it adds the ``action`` and ``resource`` refused (an anonymous caller learns nothing of the route
table), ``reason`` and ``facts`` when the refusal has them (a policy's explanation, what a credential's holder
may know), and, once a policy decision was recorded, ``explain``: the command that replays it from the audit
log. The raywarden CLI renders every field (client/answers.py); stock Ray prints the body as it is.

Ray's job client (``JobSubmissionClient``, behind `ray job` and `serve`) turns every 401 and 403 into advice
about Ray's own token (``ray get-auth-token --generate``, ``RAY_AUTH_MODE``), which never applies behind the
gateway; any other error status it prints as ``Request failed with status code N: BODY``. So on Ray's API,
a policy's 403 for that client is sent as 400 with the true ``status`` in the body, and the audit's outcome
record keeps both. Not on its version check (``GET /api/version``, the first request of every command): there
Ray's client shows the body of a 401 or 403 only, and of any other status nothing but the status. Nor for a
caller who did not authenticate (401): a stranger's answer never depends on the route. Those are sent as they
are, and the body's ``note`` says that Ray's advice after it does not apply.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from raywarden.gateway.exchange import Exchange
from raywarden.gateway.middleware import header
from raywarden.gateway.responses import Refusal, json_error

RAY_CLIENT_STATUS = 400
# Ray's job and Serve clients send requests through `requests`, with its default User-Agent.
RAY_CLIENT_AGENT = "python-requests/"
NOT_RAYS_ADVICE = (
    "Ray's client adds advice about its own token (RAY_AUTH_MODE, `ray get-auth-token`) after this answer: it "
    "does not apply to a raywarden gateway"
)
MAX_FACTS = 10
MAX_TEXT = 1000


def addressed(refusal: Refusal, ex: Exchange, scope: Scope) -> Refusal:
    """``refusal`` as it is sent to this caller: for Ray's job client, a new one sent as 400, or with a note."""
    agent = header(scope, b"user-agent") or ""
    if refusal.status not in (401, 403) or scope.get("type") != "http" or not agent.startswith(RAY_CLIENT_AGENT):
        return refusal
    route = ex.route
    # Only for a caller who authenticated: a stranger's answer never depends on the route (401 everywhere).
    resent = ex.identity is not None and route is not None and route.kind == "ray_api"
    if resent and route is not None and route.action != "cluster.version":
        shaped = Refusal(refusal.status, refusal.message, reason=refusal.reason, hint=refusal.hint, shown=refusal.shown)
        shaped.sent_status = RAY_CLIENT_STATUS
        return shaped
    shown = {**refusal.shown, "note": NOT_RAYS_ADVICE}
    return Refusal(refusal.status, refusal.message, reason=refusal.reason, hint=refusal.hint, shown=shown)


def body(refusal: Refusal, ex: Exchange) -> dict[str, Any]:
    found: dict[str, Any] = {"error": refusal.message}
    if refusal.sent_status != refusal.status:
        found["status"] = refusal.status
    if ex.identity is not None:
        if ex.action:
            found["action"] = ex.action
        if ex.resource:
            found["resource"] = ex.resource
    reason = refusal.shown.get("reason")
    if isinstance(reason, str) and reason:
        found["reason"] = reason[:MAX_TEXT]
    facts = refusal.shown.get("facts")
    if isinstance(facts, list) and facts:
        found["facts"] = [str(f)[:MAX_TEXT] for f in facts[:MAX_FACTS]]
    found["request_id"] = ex.request_id
    if ex.policy_input is not None:
        found["explain"] = f"an administrator sees why with `raywarden policy explain --request-id {ex.request_id}`"
    if refusal.hint:
        found["hint"] = refusal.hint
    note = refusal.shown.get("note")
    if isinstance(note, str) and note:
        found["note"] = note
    return found


def response(refusal: Refusal, ex: Exchange) -> JSONResponse:
    answer = json_error(refusal.sent_status, body(refusal, ex), ex.request_id)
    answer.headers.update(refusal.headers)
    return answer


def internal_error(ex: Exchange, exc: Exception, log: logging.Logger) -> Refusal:
    """The audited 500 for an exception no step turned into a refusal; the details go to the gateway's log."""
    log.exception("request %s (%s %s) failed", ex.request_id, ex.method, ex.raw_path[:200], exc_info=exc)
    return Refusal(
        500,
        "the gateway failed on this request",
        reason=f"internal error: {type(exc).__name__}: {exc}"[:500],
        hint="the gateway's log has the details under this request id",
    )


async def send(response: Response, refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
    """Send a refusal over HTTP, or refuse a WebSocket handshake with it."""
    if scope["type"] == "websocket":
        ws = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await ws.send_denial_response(response)
        else:
            # Without the ASGI denial-response extension, closing before accepting makes the server answer 403.
            await ws.close(code=1011 if refusal.status >= 500 else 1008, reason=refusal.message[:120])
        return
    await response(scope, receive, send)
