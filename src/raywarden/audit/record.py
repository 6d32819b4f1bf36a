"""Canonical record encoding and the hash chain (RFC 6962 section 2.1 domain separation)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

# RFC 6962 section 2.1: leaf inputs are prefixed with 0x00 and interior-node inputs with 0x01, so a leaf
# hash can never be passed off as a node hash (the second-preimage attack on unprefixed Merkle trees).
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
# RFC 6962 section 2.1: the hash of an empty list is the hash of the empty string; our chain starts there.
GENESIS_HEAD = hashlib.sha256(b"").digest()

#: Fields the log adds to every record; callers may not set them.
RESERVED_FIELDS = frozenset({"seq", "time", "prev"})


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, ASCII only: one record is always exactly one line."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def leaf_hash(record: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + record).digest()


def chain_head(prev_head: bytes, record: bytes) -> bytes:
    """head_n = SHA-256(0x01 || head_{n-1} || SHA-256(0x00 || record_n)); inputs are fixed length."""
    return hashlib.sha256(NODE_PREFIX + prev_head + hashlib.sha256(LEAF_PREFIX + record).digest()).digest()


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds; the fixed width makes string order equal time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_time(datetime.now(timezone.utc))
