"""Reading records back for people and SIEMs: filters, the last N, following new records, time parsing."""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from raywarden.audit.layout import Segment, list_segments
from raywarden.audit.record import format_time
from raywarden.errors import ConfigError

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now: datetime | None = None) -> str:
    """An RFC 3339 time, a date, or an age such as ``15m``/``2h``/``7d``, as a record time string (UTC)."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        ago = timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
        return format_time((now or datetime.now(timezone.utc)) - ago)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"cannot read time {text!r}", hint="use RFC 3339 (2025-06-01T12:00:00Z), a date, or an age like 15m, 2h, 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # a time without an offset is taken as UTC, like the log
    return format_time(moment)


@dataclass(frozen=True)
class RecordFilter:
    """Which records to show; every set field must match. ``action`` may be a glob (``job.*``)."""

    principal: str | None = None
    action: str | None = None
    decision: str | None = None
    since: str | None = None  # record time strings; fixed width, so string order is time order
    until: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.principal is not None and self.principal not in (record.get("principal"), record.get("actor")):
            return False
        if self.action is not None:
            action = record.get("action")
            if not isinstance(action, str) or not fnmatch.fnmatchcase(action, self.action):
                return False
        if self.decision is not None and record.get("decision") != self.decision:
            return False
        stamp = record.get("time")
        if self.since is not None and (not isinstance(stamp, str) or stamp < self.since):
            return False
        return not (self.until is not None and (not isinstance(stamp, str) or stamp >= self.until))


Entry = tuple[bytes, dict[str, Any]]


def _first_time(segment: Segment) -> str | None:
    with segment.path.open("rb") as handle:
        line = handle.readline()
    try:
        stamp = json.loads(line).get("time")
    except (ValueError, AttributeError):
        return None
    return stamp if isinstance(stamp, str) else None


def _entries(data: bytes, flt: RecordFilter) -> Iterator[Entry]:
    for line in data.split(b"\n")[:-1]:  # the last piece is empty or an incomplete write: skip it
        try:
            record = json.loads(line)
        except ValueError:
            continue  # reading is not verifying; `audit verify` reports damaged lines
        if isinstance(record, dict) and flt.matches(record):
            yield line, record


def iter_records(audit_dir: Path, flt: RecordFilter) -> Iterator[Entry]:
    """Matching records in log order, as (exact line bytes, parsed record)."""
    segments = list_segments(audit_dir) if audit_dir.is_dir() else []
    for index, segment in enumerate(segments):
        if flt.since is not None and index + 1 < len(segments):
            # Skip a whole segment when the next one already starts before --since.
            next_start = _first_time(segments[index + 1])
            if next_start is not None and next_start < flt.since:
                continue
        yield from _entries(segment.path.read_bytes(), flt)


def last_records(audit_dir: Path, flt: RecordFilter, count: int) -> list[Entry]:
    """The last ``count`` matching records, oldest first; reads segments newest first and stops early."""
    found: deque[Entry] = deque()
    segments = list_segments(audit_dir) if audit_dir.is_dir() else []
    for segment in reversed(segments):
        batch = list(_entries(segment.path.read_bytes(), flt))
        found.extendleft(reversed(batch))
        if len(found) >= count:
            break
    while len(found) > count:
        found.popleft()
    return list(found)


def follow(
    audit_dir: Path, flt: RecordFilter, *, poll_seconds: float = 0.5, stop: Callable[[], bool] = lambda: False
) -> Iterator[Entry]:
    """Yield matching records appended from now on, across rotations, until ``stop()`` is true."""
    segments = list_segments(audit_dir) if audit_dir.is_dir() else []
    current = segments[-1] if segments else None
    offset = current.path.stat().st_size if current else 0
    pending = b""
    newer_seen = False
    while not stop():
        if current is None:
            segments = list_segments(audit_dir) if audit_dir.is_dir() else []
            current, offset = (segments[0], 0) if segments else (None, 0)
        if current is not None:
            with current.path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            yield from _entries(pending[:cut], flt)
            pending = pending[cut:]
            if newer_seen and not chunk:
                # Writers never touch a segment again once a newer one exists, so having read it to the end
                # after seeing the newer one, nothing is left behind.
                current, offset, pending, newer_seen = _next_segment(audit_dir, current), 0, b"", False
                continue
            if not chunk and _next_segment(audit_dir, current) is not None:
                newer_seen = True
                continue
        time.sleep(poll_seconds)


def _next_segment(audit_dir: Path, current: Segment) -> Segment | None:
    newer = [s for s in list_segments(audit_dir) if s.first_seq > current.first_seq]
    return newer[0] if newer else None
