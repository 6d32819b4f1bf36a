"""The request target, parsed once: a canonical path and the query as (name, value) pairs.

Matching, deciding, filtering and forwarding all use these, and what Ray receives is re-serialised from them,
never the raw target: a proxy and a server that read one target two ways is how path traversal
(CVE-2023-6020) and query smuggling get through. Anything with more than one reading is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote_to_bytes

from raywarden.gateway.responses import Refusal

# RFC 3986 pchar plus '/', '%' (checked separately) - anything else in a raw path is refused.
_RAW_PATH = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")
# A query: printable ASCII without space ('#' is refused on its own, with its own hint).
_RAW_QUERY = re.compile(rb"[\x21-\x7e]*")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH_BYTES = 2048
MAX_QUERY_BYTES = 8192
MAX_QUERY_PAIRS = 64
# What a query parameter is to the route that lists it: one value, a list read in order (Ray's state-API
# filters), or one value that is a secret (a sign-in code), kept out of the audit log.
ParamKind = Literal["one", "list", "secret"]
Pairs = tuple[tuple[str, str], ...]
_ENCODE_SAFE = "-._~!$'()*,:@/"
HINT_QUERY = "percent-encode reserved characters (RFC 3986) and give each parameter once; see docs/browser.md"


class BadPath(Refusal):
    """The raw path cannot be given one unambiguous meaning."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            400,
            "malformed request path",
            reason=f"bad path: {detail}",
            hint="send a plain path: no encoded '%', '/' tricks, backslashes or control characters",
        )


class BadQuery(Refusal):
    """The query (or a form body, which has the same grammar) cannot be read one way only."""

    def __init__(self, message: str, *, what: str = "query", hint: str = HINT_QUERY) -> None:
        super().__init__(400, message, reason=f"bad {what}: {message}", hint=hint)


def canonical_path(raw_path: bytes) -> str:
    if len(raw_path) > MAX_PATH_BYTES:
        raise BadPath("path too long")
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise BadPath("path is not ASCII") from None
    if not text.startswith("/") or not _RAW_PATH.fullmatch(text) or _BAD_PERCENT.search(raw_path):
        raise BadPath("path has characters outside RFC 3986")
    try:
        decoded = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath("path does not decode to UTF-8") from None
    # Double encoding ("%252e") would decode to another meaning one hop later: refuse it.
    if "%" in decoded or "\\" in decoded or _CONTROL.search(decoded):
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


def parse_pairs(raw: bytes, *, what: str = "query", max_pairs: int = MAX_QUERY_PAIRS) -> Pairs:
    """``name=value&...`` into decoded pairs, in order. ``+`` is a space, as in Ray's server (yarl) and
    in HTML forms; empty pieces (``a=1&&b=2``) carry nothing and are dropped."""
    if not raw:
        return ()
    if len(raw) > MAX_QUERY_BYTES:
        raise BadQuery(f"{what} longer than {MAX_QUERY_BYTES} bytes", what=what)
    if b"#" in raw:
        raise BadQuery(
            f"'#' in the {what}",
            what=what,
            hint="a fragment is never sent to a server: drop it, or percent-encode '#' as %23 inside a value",
        )
    if not _RAW_QUERY.fullmatch(raw):
        raise BadQuery(f"{what} has a space, a control character or a non-ASCII byte", what=what)
    parts = [part for part in raw.split(b"&") if part]
    if len(parts) > max_pairs:
        raise BadQuery(f"more than {max_pairs} parameters in the {what}", what=what)
    pairs = []
    for part in parts:
        name, _, value = part.partition(b"=")
        pairs.append((_decode(name, what), _decode(value, what)))
    return tuple(pairs)


def _decode(raw: bytes, what: str) -> str:
    if _BAD_PERCENT.search(raw):
        raise BadQuery(f"bad percent-encoding in the {what}", what=what)
    try:
        text = unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise BadQuery(f"{what} does not decode to UTF-8", what=what) from None
    if _CONTROL.search(text):
        raise BadQuery(f"control character in the {what}", what=what)
    return text


def check_pairs(pairs: Pairs, allowed: Mapping[str, ParamKind], *, what: str = "query") -> None:
    """Every name listed for the route, and given once unless the route reads it as a list."""
    seen: set[str] = set()
    for name, _ in pairs:
        kind = allowed.get(name)
        if kind is None:
            raise BadQuery(
                f"{'query parameter' if what == 'query' else 'form field'} not allowed: {name[:64]}",
                what=what,
                hint="the parameters each route takes are listed in docs/browser.md and the route table",
            )
        if kind != "list" and name in seen:
            raise BadQuery(f"parameter {name[:64]} given more than once", what=what)
        seen.add(name)


def encode_pairs(pairs: Pairs) -> str:
    """The query as forwarded: each pair percent-encoded, ``+`` and space included, in the order given."""
    return "&".join(f"{quote(n, safe=_ENCODE_SAFE)}={quote(v, safe=_ENCODE_SAFE)}" for n, v in pairs)


@dataclass(frozen=True)
class Target:
    """What the request asks for, as the gateway understood it: what it checks is what it forwards."""

    path: str
    query: Pairs = ()

    def get(self, name: str) -> str | None:
        """A single-valued parameter (the route table lets it appear at most once)."""
        return next((value for key, value in self.query if key == name), None)

    def getall(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]

    @property
    def query_string(self) -> str:
        return encode_pairs(self.query)

    def audit_query(self, allowed: Mapping[str, ParamKind]) -> str:
        """The canonical query for the audit record, secret values left out."""
        return "&".join(
            f"{quote(n, safe=_ENCODE_SAFE)}=[REDACTED]"
            if allowed.get(n) == "secret"
            else f"{quote(n, safe=_ENCODE_SAFE)}={quote(v, safe=_ENCODE_SAFE)}"
            for n, v in self.query
        )
