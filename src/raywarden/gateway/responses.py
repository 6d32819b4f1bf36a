"""Gateway-generated responses: always JSON, always with a request id, never with Ray's details."""

from __future__ import annotations

from starlette.responses import JSONResponse

GATEWAY_HEADER = ("x-raywarden-gateway", "1")

HINT_NO_CREDENTIAL = (
    "present a client certificate issued by this cluster's access CA (the raywarden CLI does this from your "
    "profile: `raywarden login`), or `Authorization: Bearer TOKEN` with a token from `raywarden token`"
)


class Refusal(Exception):
    """Stop handling a request: answer ``status`` with a JSON error; ``reason`` goes to the audit log only."""

    def __init__(self, status: int, message: str, *, reason: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or message
        self.hint = hint


def error(status: int, message: str, request_id: str, hint: str | None = None) -> JSONResponse:
    body: dict[str, str] = {"error": message, "request_id": request_id}
    if hint:
        body["hint"] = hint
    headers = {GATEWAY_HEADER[0]: GATEWAY_HEADER[1], "x-request-id": request_id, "cache-control": "no-store"}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="raywarden"'
    return JSONResponse(body, status_code=status, headers=headers)
