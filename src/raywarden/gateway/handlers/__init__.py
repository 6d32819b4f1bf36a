"""One handler per kind of route (``Route.kind``), and the steps they share: authenticate, read the body
within its bounds, relay Ray's (filtered) answer and write the outcome record.

A handler raises ``Refusal`` (or lets ``UpstreamUnavailable`` and ``FilterError`` through): the app turns
each into the decision and outcome records and the answer (gateway/app.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Scope

from raywarden.errors import AuthenticationError
from raywarden.gateway import responses
from raywarden.gateway.answers import filter_dashboard
from raywarden.gateway.auditsink import AuditSink
from raywarden.gateway.authn import Authenticator, Identity, MissingCredential
from raywarden.gateway.authz import Viewer
from raywarden.gateway.bodies import StreamedBody, read_body, refuse_body
from raywarden.gateway.cookies import session_cookie
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.jobaccess import (
    FilterError,
    JobAccess,
    StaleJobRecord,
    filter_job_details,
    filter_job_list,
)
from raywarden.gateway.jobrecords import JobRecords
from raywarden.gateway.middleware import header
from raywarden.gateway.oidc_people import AdmissionRefused
from raywarden.gateway.route_model import Route, Routed
from raywarden.gateway.tls import PEER_CERT_STATE_KEY
from raywarden.gateway.upstream import AnswerTooLarge, Body, Upstream, UpstreamResponse, UpstreamStream
from raywarden.policy.engine import Entity

Filter = Callable[[bytes], tuple[bytes, dict[str, int]]]
# An unfiltered answer this small, of a declared length, is relayed whole: streaming it costs more than it saves.
SMALL_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Services:
    """What every handler may use."""

    authenticator: Authenticator
    audit: AuditSink
    upstream: Upstream
    max_body_bytes: int
    jobs: JobRecords
    # Answers the gateway filters are read whole, up to this many bytes (beyond: 502 with a hint).
    max_filtered_bytes: int
    # Where the workers' shared lock files are (gateway/locks.py); None: this process only.
    locks_dir: Path | None = None


class Handler(Protocol):
    async def handle(self, ex: Exchange, found: Routed, request: Request) -> Response: ...


async def authenticate(services: Services, ex: Exchange, scope: Scope, *, session: bool) -> Identity:
    """The caller's identity (noted on the exchange), or a 401 whose reason stays in the audit log (the
    caller is told only what a credential's holder may know: that it expired, is revoked)."""
    started = time.monotonic()
    try:
        ex.identity = await credential_of(services, scope, session=session)
    except MissingCredential as exc:
        raise responses.Refusal(
            401, "authentication required", reason=exc.reason, hint=responses.HINT_NO_CREDENTIAL
        ) from None
    except AdmissionRefused as exc:
        raise responses.Refusal(
            403, "not admitted to this cluster", reason=exc.reason, hint=exc.hint, shown={"reason": exc.public}
        ) from None
    except AuthenticationError as exc:
        shown = {"reason": exc.public} if exc.public else None
        raise responses.Refusal(
            401, "authentication failed", reason=exc.reason, hint=responses.HINT_NO_CREDENTIAL, shown=shown
        ) from None
    finally:
        ex.spent("authentication", started)
    return ex.identity


async def credential_of(services: Services, scope: Scope, *, session: bool) -> Identity:
    """Authenticate the credential the request (or WebSocket) presents: its connection's client certificate,
    its Authorization header, or its session cookie where the route takes one. Raises AuthenticationError."""
    der = scope.get("state", {}).get(PEER_CERT_STATE_KEY)
    cookie = session_cookie(header(scope, b"cookie")) if session else None
    return await services.authenticator.authenticate(der, header(scope, b"authorization"), cookie)


async def body_of(services: Services, request: Request, route: Route) -> bytes | None:
    """The route's body, read within its size limit; a body on a route that takes none is refused."""
    if route.body == "none":
        await refuse_body(request)
        return None
    limit = route.max_body or services.max_body_bytes
    hint = "raise max_body_bytes in the cluster config for larger packages" if route.max_body is None else None
    return await read_body(request, limit, hint or f"this route takes bodies of at most {limit} bytes")


def streamed_body(services: Services, request: Request, route: Route) -> StreamedBody:
    """A package upload, forwarded as it arrives after the decision (bounded like ``body_of``)."""
    limit = route.max_body or services.max_body_bytes
    hint = "raise max_body_bytes in the cluster config for larger packages" if route.max_body is None else None
    return StreamedBody(request, limit, hint or f"this route takes bodies of at most {limit} bytes")


def forwarded_headers(request: Request, *, filtered: bool) -> dict[str, str]:
    headers = {k.lower(): v for k, v in request.headers.items()}
    if filtered:
        headers.pop("accept-encoding", None)  # the gateway must read what it filters
    return headers


def answer_filter(
    found: Routed, viewer: Viewer, entity: Entity, access: JobAccess | None, jobs: JobRecords | None = None
) -> Filter | None:
    """How the route's ``filter`` reduces Ray's answer for this caller (gateway/jobaccess.py)."""
    name = found.route.filter
    if name is None:
        return None
    if name == "job_list":
        return lambda body: filter_job_list(viewer, body)
    if name == "job_details":

        def details(body: bytes) -> tuple[bytes, dict[str, int]]:
            try:
                return filter_job_details(viewer, entity, body), {}
            except StaleJobRecord:
                if jobs is not None:
                    jobs.forget([entity.id])
                raise

        return details
    return lambda body: filter_dashboard(name, viewer, body, access, found.target, found.params)


async def forward(
    services: Services,
    ex: Exchange,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: Body,
    keep: Filter | None,
) -> Response:
    """Ray's answer to the canonical request: read whole and reduced by ``keep`` when the route filters it
    (up to ``max_filtered_bytes``), else streamed to the caller as it arrives."""
    answer = await services.upstream.open(
        method, path, query, headers, body, traceparent=ex.trace.traceparent, timing=lambda t: ex.spent("upstream", t)
    )
    if keep is None and (answer.length is None or answer.length > SMALL_ANSWER_BYTES):
        return streamed(ex, answer)
    try:
        data = await answer.read(services.max_filtered_bytes if keep is not None else SMALL_ANSWER_BYTES)
    except AnswerTooLarge as exc:
        raise responses.Refusal(
            502,
            "Ray's answer is too large for the gateway to check",
            reason=exc.message,
            hint="narrow the request (a limit, a filter, one job), or raise max_filtered_answer_bytes in the "
            "cluster config",
        ) from None
    finally:
        answer.close()
    return await relay(ex, UpstreamResponse(answer.status, answer.headers, data), keep)


def streamed(ex: Exchange, answer: UpstreamStream) -> Response:
    """Ray's answer relayed chunk by chunk; the outcome record, written when it ends, says how much was sent."""
    headers = dict(answer.headers)
    headers[responses.GATEWAY_HEADER[0]] = responses.GATEWAY_HEADER[1]

    async def body() -> AsyncIterator[bytes]:
        sent, complete = 0, False
        try:
            async for chunk in answer.chunks():
                sent += len(chunk)
                yield chunk
            complete = True
        finally:
            answer.close()
            await ex.finish(answer.status, bytes_sent=sent, complete=None if complete else False)

    return StreamingResponse(body(), status_code=answer.status, headers=headers)


async def relay(ex: Exchange, answer: UpstreamResponse, keep: Filter | None = None) -> Response:
    """Ray's answer, reduced by ``keep`` when it is a success; the outcome record says what it hid."""
    shown: dict[str, int] = {}
    body = answer.body
    if keep is not None and answer.status == 200 and answer.body:  # an empty answer (HEAD) shows nothing
        if dict(answer.headers).get("content-encoding"):
            raise FilterError("Ray sent an encoded answer the gateway cannot filter")
        body, shown = keep(answer.body)
    await ex.finish(answer.status, **shown)
    headers = dict(answer.headers)
    headers[responses.GATEWAY_HEADER[0]] = responses.GATEWAY_HEADER[1]
    return Response(body, status_code=answer.status, headers=headers)
