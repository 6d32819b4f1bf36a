"""A Serve call's target, parsed once: the path Serve will route on, and the query, checked but not read.

Ray Serve routes on the percent-decoded path and never resolves dot segments (`/a%2Fb` reaches app ``a/b``,
`/a/../echo` reaches app ``a``; docs/serve.md). So anything that two readers could take two ways is refused
here, before matching: an encoded ``/``, ``\\`` or ``%``, a ``.`` or ``..`` segment, an empty segment, control
characters, raw bytes outside RFC 3986, a bad escape. What is forwarded is re-encoded from the decoded path, so
that Serve's one decode gives back exactly the string the gateway matched and decided on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from raywarden.gateway.responses import Refusal

_RAW_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RAW_QUERY = re.compile(rb"[\x21-\x7e]*")
_BAD_QUERY_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
MAX_PATH_BYTES = 2048
MAX_QUERY_BYTES = 16384
# RFC 3986 unreserved and sub-delims, ':' and '@' stay as they are; everything else is escaped again.
_SAFE = "/-._~!$&'()*+,;=:@"
HINT_PATH = "send a plain path: no encoded '/', '\\\\' or '%', no '.', '..' or empty segments, no control characters"


class BadServePath(Refusal):
    def __init__(self, detail: str) -> None:
        super().__init__(400, "malformed request path", reason=f"bad Serve path: {detail}", hint=HINT_PATH)


@dataclass(frozen=True)
class ServeTarget:
    path: str  # decoded: what Serve matches its route prefixes against
    query: bytes  # checked, forwarded as sent

    @property
    def encoded_path(self) -> str:
        return encode_serve_path(self.path)


def encode_serve_path(path: str) -> str:
    return quote(path, safe=_SAFE)


def serve_target(raw_path: bytes, raw_query: bytes) -> ServeTarget:
    return ServeTarget(canonical_serve_path(raw_path), checked_query(raw_query))


def canonical_serve_path(raw_path: bytes) -> str:
    if len(raw_path) > MAX_PATH_BYTES:
        raise BadServePath("path longer than 2048 bytes")
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise BadServePath("raw bytes outside ASCII") from None
    if not text.startswith("/") or not _RAW_PATH.fullmatch(text):
        raise BadServePath("characters outside RFC 3986")
    if _BAD_PERCENT.search(text):
        raise BadServePath("a '%' that starts no escape")
    lowered = text.lower()
    for escape in ("%2f", "%5c", "%25"):
        if escape in lowered:
            raise BadServePath(f"an encoded {bytes.fromhex(escape[1:]).decode()!r}")
    try:
        decoded = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadServePath("does not decode to UTF-8") from None
    if _CONTROL.search(decoded) or "\\" in decoded:
        raise BadServePath("a control character or a backslash")
    segments = decoded.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise BadServePath("a '.' or '..' segment")
        if segment == "" and index != len(segments) - 1:
            raise BadServePath("an empty segment ('//')")
    return decoded


def checked_query(raw: bytes) -> bytes:
    """The query is the application's (no policy reads it): checked for what proxies read two ways, then sent on
    unchanged."""
    if len(raw) > MAX_QUERY_BYTES:
        raise Refusal(400, "query too long", reason="bad Serve query: too long", hint="send at most 16 KiB of query")
    if b"#" in raw:
        raise Refusal(
            400,
            "'#' in the query",
            reason="bad Serve query: '#'",
            hint="a fragment is never sent to a server: drop it, or percent-encode '#' as %23",
        )
    if not _RAW_QUERY.fullmatch(raw) or _BAD_QUERY_PERCENT.search(raw):
        raise Refusal(
            400,
            "malformed query",
            reason="bad Serve query: a space, a control character, a raw byte outside ASCII or a bad escape",
            hint="percent-encode the query (RFC 3986)",
        )
    return raw
