"""Gateway-generated answers: a refusal is always JSON with a request id, never with Ray's details."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from starlette.responses import JSONResponse

from raywarden.errors import RaywardenError

GATEWAY_HEADER = ("x-raywarden-gateway", "1")
DecisionWord = Literal["allow", "deny", "error"]

HINT_NO_CREDENTIAL = (
    "present a client certificate issued by this cluster's access CA (the raywarden CLI does this from your "
    "profile: `raywarden login`), or `Authorization: Bearer TOKEN` with a token from `raywarden token`"
)
HINT_ASK_ADMIN = "ask an administrator for access; policies decide per action and resource"


class Refusal(RaywardenError):
    """Stop handling a request: answer ``status`` with a JSON error; ``reason`` goes to the audit log only.

    ``shown`` is what the caller is told beyond the message and hint (gateway/refusals.py): ``reason``, what a
    policy's explanation or a credential's holder may know, and ``facts``, the conditions that failed.
    ``sent_status`` is the status put on the wire: ``status``, except for Ray's job client (refusals.py).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str | None = None,
        hint: str | None = None,
        shown: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.sent_status = status
        self.reason = reason or message
        self.shown: dict[str, Any] = dict(shown or {})
        self.headers: dict[str, str] = {}  # extra answer headers (Allow on a 405)

    @property
    def decision(self) -> DecisionWord:
        """The audit vocabulary: the caller was refused (deny), or the gateway or Ray failed (error)."""
        return "error" if self.status >= 500 else "deny"


def error(status: int, message: str, request_id: str, hint: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "request_id": request_id}
    if hint:
        body["hint"] = hint
    return json_error(status, body, request_id)


def json_error(status: int, body: dict[str, Any], request_id: str) -> JSONResponse:
    """A gateway error answer: ``body`` always holds ``error`` and ``request_id`` (and ``hint`` when there is one)."""
    headers = {GATEWAY_HEADER[0]: GATEWAY_HEADER[1], "x-request-id": request_id, "cache-control": "no-store"}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="raywarden"'
    return JSONResponse(body, status_code=status, headers=headers)


def ray_unreachable(detail: str) -> Refusal:
    return Refusal(
        503,
        "Ray is not reachable behind the gateway",
        reason=f"upstream unavailable: {detail}",
        hint="check `raywarden status`; start the cluster with `raywarden up`",
    )


def unchecked_answer(detail: str) -> Refusal:
    """Fail closed: an answer of Ray's that the gateway cannot filter is not relayed."""
    return Refusal(
        502,
        "Ray's answer could not be checked",
        reason=detail,
        hint="retry; if it persists, the gateway log and `raywarden doctor` say what Ray answered",
    )


# What every request gets while the audit log cannot be written (principle 5: no record, no request).
AUDIT_DOWN = Refusal(
    503,
    "audit log unavailable; requests are refused until it is writable",
    hint="check disk space and permissions of the audit dir",
)
