"""Request bodies, read within bounds before they are parsed: size (while reading), nesting depth and the
size of each number literal (before ``json.loads`` runs), and for forms the number of fields.

A body outside these bounds is known bad input: a 400 with a hint, decided and audited like any refusal,
never a RecursionError, an OverflowError or a 4300-digit integer conversion deep inside a handler.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request

from raywarden.gateway.deadlines import CONNECTION_STATE_KEY
from raywarden.gateway.request import BadQuery, Pairs, ParamKind, check_pairs, parse_pairs
from raywarden.gateway.responses import Refusal

# A job's runtime_env nests a few levels (conda -> dependencies -> pip -> list); control bodies are flat.
MAX_DEPTH = 32
# Longer than any 64-bit integer or float Ray reads; a bigger number is no valid amount of anything.
MAX_NUMBER_CHARS = 32
MAX_FORM_FIELDS = 8
# Strings first, so that brackets inside them do not count; then the brackets that remain.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


class BadBody(Refusal):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(400, message, reason=f"bad request body: {message}", hint=hint)


class ClientGone(Refusal):
    """The client left before its request body ended: it hung up (``client_aborted``, recorded with status
    499, "client closed request") or stalled past the body idle timeout (``client_timeout``, 408). Nobody is
    left to answer; the records say what happened and how much arrived."""

    def __init__(self, request: Request, received: int) -> None:
        mark = request.scope.get("state", {}).get(CONNECTION_STATE_KEY)
        timed_out = bool(getattr(mark, "timed_out", False))
        self.outcome = "client_timeout" if timed_out else "client_aborted"
        self.bytes_received = received
        what = "stalled past the body idle timeout" if timed_out else "closed the connection"
        super().__init__(
            408 if timed_out else 499,
            f"the client {what} before its request body ended",
            reason=f"{self.outcome}: request body ended after {received} bytes",
        )


async def _parts(request: Request, received: list[int]) -> AsyncIterator[bytes]:
    """``request.stream()``, with a client that leaves mid-body turned into ``ClientGone``."""
    try:
        async for part in request.stream():
            received[0] += len(part)
            yield part
    except ClientDisconnect:
        raise ClientGone(request, received[0]) from None


async def read_body(request: Request, limit: int, hint: str | None) -> bytes:
    """The whole body, refused (413) as soon as it is known to be larger than ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Refusal(413, f"request body larger than {limit} bytes", hint=hint)
    data = bytearray()
    async for part in _parts(request, [0]):
        data += part
        if len(data) > limit:
            raise Refusal(413, f"request body larger than {limit} bytes", hint=hint)
    return bytes(data)


class StreamedBody:
    """A body forwarded as it arrives (a package upload), never held whole: refused (413) as soon as it is
    known to exceed ``limit``. ``refusal`` keeps the refusal for the handler, since the upstream client
    reports a failing body as its own error."""

    def __init__(self, request: Request, limit: int, hint: str | None) -> None:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise Refusal(413, f"request body larger than {limit} bytes", hint=hint)
        self._request = request
        self._limit = limit
        self._hint = hint
        self.received = 0
        self.refusal: Refusal | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for part in _parts(self._request, [self.received]):
                self.received += len(part)
                if self.received > self._limit:
                    raise Refusal(413, f"request body larger than {self._limit} bytes", hint=self._hint)
                if part:
                    yield part
        except Refusal as refusal:
            self.refusal = refusal
            raise


async def refuse_body(request: Request) -> None:
    """A body on a route that takes none is a smuggling attempt or a client bug: refuse it."""
    async for part in _parts(request, [0]):
        if part:
            raise Refusal(400, "this route takes no request body", hint="send the request without a body")


def load_json(body: bytes, *, what: str = "body", max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` within bounds: depth checked first, every number literal checked as it is read."""
    hint = f"send one JSON object: at most {max_depth} levels deep, numbers of at most {MAX_NUMBER_CHARS} characters"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody(f"{what} is not UTF-8", hint) from None
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > max_depth:
            raise BadBody(f"{what} nests deeper than {max_depth} levels", hint)

    def number(literal: str) -> float | int:
        if len(literal) > MAX_NUMBER_CHARS:
            raise BadBody(f"a number in the {what} has more than {MAX_NUMBER_CHARS} characters", hint)
        value = float(literal) if any(c in literal for c in ".eE") else int(literal)
        if isinstance(value, float) and not math.isfinite(value):
            raise BadBody(f"a number in the {what} is out of range", hint)
        return value

    def constant(name: str) -> Any:
        raise BadBody(f"{name} is not JSON", hint)

    try:
        return json.loads(text, parse_int=number, parse_float=number, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise BadBody(f"{what} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", hint) from None


def load_json_object(body: bytes | None, *, what: str = "body") -> dict[str, Any]:
    value = load_json(body or b"{}", what=what)
    if not isinstance(value, dict):
        raise BadBody(f"{what} must be a JSON object", "send one JSON object ({...})")
    return value


def load_form(body: bytes | None, fields: Mapping[str, ParamKind]) -> dict[str, str]:
    """An HTML form (application/x-www-form-urlencoded), with the query's grammar: each field once."""
    try:
        pairs: Pairs = parse_pairs(body or b"", what="form", max_pairs=MAX_FORM_FIELDS)
        check_pairs(pairs, fields, what="form")
    except BadQuery as exc:
        raise BadBody(exc.message, "submit the console's own form") from None
    return dict(pairs)
