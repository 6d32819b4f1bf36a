"""Keep credentials out of audit records: strip secret-named fields and secret-looking values."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from raywarden.audit.errors import AuditRecordError
from raywarden.audit.record import RESERVED_FIELDS

REDACTED = "[REDACTED]"
MAX_DEPTH = 32

# Matched anywhere in the lower-cased key with separators removed ("X-Auth-Token", "clientSecret").
# Over-redaction ("tokenizer") costs a little detail; under-redaction leaks a credential for ever.
_SECRET_KEY_PARTS = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "authorization",
    "cookie",
    "privatekey",
    "apikey",
    "credential",
)
# "code" is too common a substring ("encode", "unicode"), so it must be a whole word of the key
# ("enrollment_code", "authCode"); these well-known non-secret codes stay readable.
_SAFE_CODE_KEYS = frozenset(
    {"statuscode", "exitcode", "errorcode", "returncode", "httpcode", "reasoncode", "responsecode"}
)
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_API_KEY = re.compile(r"rwk_[0-9a-f]{16}_[A-Za-z0-9_-]+")  # raywarden's own API keys (identity/apikeys.py)


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True for field names that hold credentials (token, secret, password, code, cookie, ...)."""
    compact = re.sub(r"[^a-z0-9]", "", key.lower())
    if any(part in compact for part in _SECRET_KEY_PARTS):
        return True
    words = [w.lower() for w in _WORD_SPLIT.split(key) if w]
    return any(w in ("code", "codes") for w in words) and compact not in _SAFE_CODE_KEYS


def scrub_text(text: str) -> str:
    """Replace bearer credentials and JWTs inside ``text``; a PEM private key replaces the whole value."""
    # Plain substring tests first: this runs for every string of every record.
    if "eyJ" not in text and "PRIVATE KEY" not in text and "rwk_" not in text and "bearer" not in text.lower():
        return text
    if _PEM_PRIVATE.search(text):
        return REDACTED
    text = _API_KEY.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _JWT.sub(REDACTED, text)


def redact(record: Mapping[str, Any]) -> dict[str, Any]:
    """Return a JSON-safe deep copy of ``record`` with secrets removed; raise on anything unrecordable.

    Secret-named fields keep their name with the value replaced by ``[REDACTED]`` (so an auditor sees a
    credential was present); secret-looking values are scrubbed wherever they appear. Keys that themselves
    look like credentials, reserved fields (seq, time, prev) and non-JSON values are refused.
    """
    if not isinstance(record, Mapping):
        raise AuditRecordError(f"an audit record must be a mapping, not {type(record).__name__}")
    for field in RESERVED_FIELDS.intersection(record):
        raise AuditRecordError(f"audit record sets the reserved field {field!r}", hint="the log adds it itself")
    return _clean_mapping(record, 0)


_OK, _SECRET, _REFUSE = 0, 1, 2


@functools.lru_cache(maxsize=4096)
def _key_verdict(key: str) -> int:
    if scrub_text(key) != key:
        return _REFUSE
    return _SECRET if is_secret_key(key) else _OK


def _clean_mapping(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    # Runs on every append: exact-type checks first, the general (slower) isinstance path only as fallback.
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            raise AuditRecordError(f"audit record keys must be strings, got {type(key).__name__}")
        verdict = _key_verdict(key)
        if verdict == _SECRET:
            out[key] = REDACTED
        elif verdict == _REFUSE:
            raise AuditRecordError("an audit record key looks like a credential; refusing to record it")
        elif type(item) is str:
            out[key] = scrub_text(item)
        elif item is None or type(item) is int or type(item) is bool:
            out[key] = item
        else:
            out[key] = _clean(item, depth + 1)
    return out


def _clean(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise AuditRecordError(f"audit record nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind is list:
        return [_clean(item, depth + 1) for item in value]
    if kind is dict:
        return _clean_mapping(value, depth)
    if kind is float and math.isfinite(value):
        return value
    # bool before int: bool is a subclass of int and must stay a JSON boolean.
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditRecordError("audit record contains a non-finite number")
        return value
    if isinstance(value, Mapping):
        return _clean_mapping(value, depth)
    if isinstance(value, list | tuple):
        return [_clean(item, depth + 1) for item in value]
    raise AuditRecordError(
        f"audit record contains a {type(value).__name__}; only JSON types are recorded",
        hint="convert it to str, int, float, bool, None, list or dict first",
    )
