"""What the gateway knows of a job before deciding on it: Ray's record, reduced to the attributes that never
change (job id, submission id, owner, entrypoint, type), cached per worker.

A job's owner never changes, but a submission id can name a new job once the old one is deleted. So every
delete through the gateway is written to a deletion log shared by all workers (``JobDeletions``), before it is
forwarded and again once Ray answered, while the deleting request holds the id against new submissions; each
worker reads the log's new lines (one ``stat`` when there are none) before it uses its cache, and keeps no
record fetched while a deletion was written. A policy that reads ``status`` gets Ray's current record every
time. docs/architecture.md, "Job records", says what remains.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raywarden.gateway import owner_seal
from raywarden.gateway.upstream import Upstream
from raywarden.policy.jobattrs import OWNER_KEY

MAX_ENTRIES = 8192
# The job attributes (policy/jobattrs.py job_attrs) that Ray never changes after submission.
_IMMUTABLE = ("job_id", "submission_id", "entrypoint", "type")


def immutable_record(info: dict[str, Any]) -> dict[str, Any]:
    kept = {k: info[k] for k in _IMMUTABLE if k in info}
    metadata = info.get("metadata")
    if isinstance(metadata, dict) and OWNER_KEY in metadata:
        kept["metadata"] = {OWNER_KEY: metadata[OWNER_KEY]}
    return kept


class JobDeletions:
    """An append-only file of deleted job ids, shared by the gateway's workers (its run dir)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def record(self, ids: Iterable[str]) -> None:
        line = json.dumps(sorted({i.casefold() for i in ids if i})).encode() + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one write of a short line with O_APPEND: never interleaved with another's
        finally:
            os.close(fd)

    def read_from(self, offset: int) -> tuple[int, set[str]]:
        """Ids deleted since ``offset``, and the offset after the last complete line."""
        try:
            with open(self.path, "rb") as file:
                file.seek(offset)
                data = file.read()
        except FileNotFoundError:
            return 0, set()
        complete = data[: data.rfind(b"\n") + 1]
        ids: set[str] = set()
        for line in complete.splitlines():
            try:
                ids.update(str(i) for i in json.loads(line))
            except (ValueError, TypeError):
                continue
        return offset + len(complete), ids


class JobRecords:
    def __init__(self, upstream: Upstream, deletions: JobDeletions, max_entries: int = MAX_ENTRIES) -> None:
        self._upstream = upstream
        self._deletions = deletions
        self._max_entries = max_entries
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._offset = deletions.size()  # deletions before this worker started name nothing it holds
        self.hits = 0
        self.misses = 0

    async def info(self, ref: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """Ray's record of the job ``ref`` names (its immutable part unless ``fresh``), None if Ray has none."""
        if not fresh:
            self._catch_up()
            found = self._entries.get(ref)
            if found is not None:
                self._entries.move_to_end(ref)
                self.hits += 1
                return found
            self.misses += 1
        before = self._deletions.size()
        info = await self._upstream.job_info(ref)
        if info is None:
            return None  # not cached: the id may name a job submitted later
        info = owner_seal.current().vouch(info)  # an owner the gateway did not seal is no owner
        kept = immutable_record(info)
        if self._deletions.size() == before:  # no deletion was written while Ray answered
            self._entries[ref] = kept
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return info if fresh else kept

    def forget(self, ids: Iterable[str]) -> None:
        """Drop the records ``ids`` name (compared ignoring case, as Ray compares ids)."""
        gone = {i.casefold() for i in ids}
        for key in [k for k, v in self._entries.items() if _names(k, v) & gone]:
            del self._entries[key]

    def deleting(self, ids: Iterable[str]) -> None:
        """A delete of the job these ids name: told to every worker (call before forwarding, and after)."""
        ids = list(ids)
        self._deletions.record(ids)
        self.forget(ids)

    def _catch_up(self) -> None:
        size = self._deletions.size()
        if size == self._offset:
            return
        if size < self._offset:  # a new log (the gateway restarted): nothing cached is known to be current
            self._entries.clear()
            self._offset = 0
        self._offset, ids = self._deletions.read_from(self._offset)
        if ids:
            self.forget(ids)


def _names(key: str, record: dict[str, Any]) -> set[str]:
    names = {key.casefold()}
    for field in ("job_id", "submission_id"):
        value = record.get(field)
        if isinstance(value, str) and value:
            names.add(value.casefold())
    return names
