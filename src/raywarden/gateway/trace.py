"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the caller's ``traceparent`` when it is valid,
otherwise a new trace; the gateway's own span is forwarded to Ray and written into both audit records."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from starlette.types import Scope

# Version 00: exactly version-traceid-parentid-flags. A later version may append fields after a "-" (section
# 3.2.4: parse what version 00 defines); version ff is invalid, and so is uppercase hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class Trace:
    trace_id: str
    span_id: str  # the gateway's span: the parent of whatever Ray does for this request
    parent_id: str | None  # the caller's span, when it sent a valid traceparent
    flags: str

    @property
    def traceparent(self) -> str:
        """What Ray receives: the same trace, the gateway's span as parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def audit_fields(self) -> dict[str, str]:
        fields = {"trace_id": self.trace_id, "span_id": self.span_id}
        if self.parent_id is not None:
            fields["parent_span_id"] = self.parent_id
        return fields


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid header value, else None."""
    found = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if found is None:
        return None
    version, trace_id, parent_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def trace_of(scope: Scope) -> Trace:
    """The request's trace: continued from one valid ``traceparent`` header, else a new one (sampled flag
    off). Several traceparent headers are ambiguous and start a new trace too."""
    values = [v for k, v in scope.get("headers", ()) if k == b"traceparent"]
    parsed = parse_traceparent(values[0].decode("latin-1")) if len(values) == 1 else None
    span = secrets.token_hex(8)
    if parsed is None:
        return Trace(secrets.token_hex(16), span, None, "00")
    trace_id, parent_id, flags = parsed
    # Only the sampled bit is defined; other bits are passed on as zero (section 3.2.2.5).
    return Trace(trace_id, span, parent_id, f"{int(flags, 16) & 0x01:02x}")
