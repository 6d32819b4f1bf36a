"""Canonical request paths: decode once, resolve dot segments, refuse anything ambiguous.

Matching and forwarding both use the canonical path, so Ray only ever sees the path that was authorized
(CVE-2023-6020 and friends rely on a proxy and a server disagreeing about what a path means).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

# RFC 3986 pchar plus '/', '%' (checked separately) - anything else in a raw target is refused.
_RAW_ALLOWED = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
MAX_PATH_BYTES = 2048


class BadPath(ValueError):
    """The raw path cannot be given one unambiguous meaning."""


def canonical_path(raw_path: bytes) -> str:
    if len(raw_path) > MAX_PATH_BYTES:
        raise BadPath("path too long")
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise BadPath("path is not ASCII") from None
    if not text.startswith("/") or not _RAW_ALLOWED.fullmatch(text) or _PERCENT.search(text):
        raise BadPath("path has characters outside RFC 3986")
    try:
        decoded = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath("path does not decode to UTF-8") from None
    # Double encoding ("%252e") would decode to another meaning one hop later: refuse it.
    if "%" in decoded or "\\" in decoded or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise BadPath("path contains an encoded '%', a backslash or a control character")
    stack: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if stack:
                stack.pop()
            continue
        stack.append(segment)
    trailing = decoded.endswith(("/", "/.", "/..")) and bool(stack)
    return "/" + "/".join(stack) + ("/" if trailing else "")


def encode_path(path: str) -> str:
    """Re-encode a canonical path for the upstream request, byte for byte what was matched."""
    return quote(path, safe="/-._~:@!$&'()*+,;=")
