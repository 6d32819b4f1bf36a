"""The channel from a worker node to the head: HTTPS to the gateway, verified against the access CA the node
pinned at `join` (the only trust anchor a worker holds for the head)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from raywarden.errors import ClusterError, PKIError


class HeadRefusal(ClusterError):
    """The head answered, and refused. ``retry_after_s`` is set when the refusal is about timing."""

    def __init__(self, status: int, message: str, *, hint: str | None, retry_after_s: float | None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.retry_after_s = retry_after_s


def post(head_url: str, path: str, payload: dict[str, Any], ca: Path, *, timeout: float = 60) -> dict[str, Any]:
    try:
        resp = requests.post(head_url.rstrip("/") + path, json=payload, verify=str(ca), timeout=timeout)
    except requests.exceptions.SSLError as exc:
        raise PKIError(
            f"TLS with the head failed: {exc}",
            hint="the URL's host must be one the gateway certificate names (the head's --node-ip)",
        ) from None
    except requests.RequestException as exc:
        raise ClusterError(f"cannot reach the head at {head_url}: {type(exc).__name__}") from None
    try:
        body: dict[str, Any] = resp.json()
    except ValueError:
        body = {"error": resp.text[:300]}
    if resp.status_code != 200:
        retry = body.get("retry_after_s")
        raise HeadRefusal(
            resp.status_code,
            f"the head refused ({resp.status_code}): {body.get('error', '')} (request {body.get('request_id', '?')})",
            hint=body.get("hint"),
            retry_after_s=float(retry) if isinstance(retry, (int, float)) else None,
        )
    return body
