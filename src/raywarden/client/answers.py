"""The gateway's JSON error answers, rendered for a person: what was refused, why, and the request id."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from raywarden.errors import GatewayRequestError


def json_object(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def refusal(status: int, body: dict[str, Any]) -> GatewayRequestError:
    """The gateway's JSON error as one message: what was refused and why, with its request id. The body's
    ``status`` is the refusal's own when the gateway sent Ray's job client another (gateway/refusals.py)."""
    true = body.get("status")
    if isinstance(true, int) and not isinstance(true, bool) and 400 <= true <= 599:
        status = true
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    parts = [f"gateway answered {status} ({phrase}): {_text(body.get('error')) or phrase}"]
    action, resource = _text(body.get("action")), _text(body.get("resource"))
    if action or resource:
        parts.append(f"  refused: {action or '?'} on {resource or '?'}")
    reason = _text(body.get("reason"))
    if reason:
        parts.append(f"  because: {reason}")
    facts = body.get("facts")
    if isinstance(facts, list) and facts:
        parts.append(f"  failed: {', '.join(_text(f) for f in facts)}")
    if body.get("request_id"):
        parts.append(f"  request id: {_text(body['request_id'])}")
    hint = _text(body.get("hint"))
    explain = _text(body.get("explain"))
    if explain:
        hint = f"{hint}; {explain}" if hint else explain
    return GatewayRequestError(status, "\n".join(parts), hint=hint or None)


def _text(value: object) -> str:
    # The answer comes from the network: keep it to printable text of a sane length.
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return "".join(ch if ch.isprintable() else " " for ch in text)[:500]
