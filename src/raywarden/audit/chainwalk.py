"""The walk along the records' hash chain for `audit verify` (verify.py): a fast hash-only pass between signed
checkpoints, and where something is wrong, a parsing pass that names the first bad record and what happened to it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from raywarden.audit.checkpoint import Checkpoint
from raywarden.audit.errors import AuditVerificationError, ProblemKind
from raywarden.audit.layout import Segment, Snapshot, read_prefix
from raywarden.audit.record import chain_head

# How far ahead the classifier looks for a missing sequence number before calling it a deletion.
_REORDER_WINDOW = 100_000


@dataclass
class _Line:
    seq: int  # position in the log, i.e. the sequence number this line must carry
    data: bytes
    location: str
    torn: bool = False  # an incomplete last line (no newline)


class ChainWalker:
    """Walks the records: a fast hash-only pass between signed checkpoints, a parsing pass where needed."""

    def __init__(self, snapshot: Snapshot, start_seq: int, start_head: bytes, anchors: list[Checkpoint]) -> None:
        self.segments = snapshot.segments
        self.start_seq = start_seq
        self.start_head = start_head
        self.anchors = anchors
        self._cache: tuple[int, list[bytes], bytes] | None = None

    def _segment_lines(self, index: int) -> tuple[list[bytes], bytes]:
        """Complete lines of segment ``index`` and its incomplete tail (b"" normally); last one cached."""
        if self._cache is None or self._cache[0] != index:
            segment, size = self.segments[index]
            lines = read_prefix(segment.path, size).split(b"\n")
            torn = lines.pop()
            self._cache = (index, lines, torn)
        return self._cache[1], self._cache[2]

    def _start(self) -> tuple[int, int, int]:
        """(segment index, line index, position) of the first record to check."""
        if self.start_seq == 0:
            return 0, 0, 0  # positions count from the first line present; a missing front shows as deletion
        for index in range(len(self.segments) - 1, -1, -1):
            segment: Segment = self.segments[index][0]
            if segment.first_seq <= self.start_seq:
                return index, self.start_seq - segment.first_seq, self.start_seq
        raise AuditVerificationError("deletion", self.start_seq, "no segment holds this checkpoint's next record")

    def run(self) -> tuple[int, bytes]:
        """Check everything; return (number of records, chain head)."""
        sha256 = hashlib.sha256
        first_si, first_li, pos = self._start()
        head = self.start_head
        anchors = self.anchors
        anchor_index = 0
        next_anchor = anchors[0].size if anchors else -1
        last_good = (first_si, first_li, pos, head)  # where the last verified anchor left us
        for si in range(first_si, len(self.segments)):
            lines, torn = self._segment_lines(si)
            start_li = first_li if si == first_si else 0
            if start_li > len(lines):
                raise AuditVerificationError("deletion", self.start_seq, "the segment holding it is too short")
            for li in range(start_li, len(lines)):
                # Hot loop: chain_head inlined; RFC 6962 section 2.1 prefixes 0x00 (leaf) and 0x01 (node).
                head = sha256(b"\x01" + head + sha256(b"\x00" + lines[li]).digest()).digest()
                pos += 1
                if pos == next_anchor:
                    if head != anchors[anchor_index].head:
                        self._scan(last_good, anchors[anchor_index])
                        raise self._unlocated(last_good[2], anchors[anchor_index])
                    last_good = (si, li + 1, pos, head)
                    anchor_index += 1
                    next_anchor = anchors[anchor_index].size if anchor_index < len(anchors) else -1
            if torn and si != len(self.segments) - 1:
                self._scan(last_good, None)
        if anchor_index < len(anchors):
            # A signed checkpoint covers records that are not there: find where they went.
            self._scan(last_good, anchors[anchor_index])
            raise self._unlocated(last_good[2], anchors[anchor_index])
        # Records after the last checkpoint have no signature yet; their seq and prev fields still must agree.
        self._scan(last_good, None)
        return pos, head

    def _lines_from(self, si: int, li: int, pos: int) -> Iterator[_Line]:
        for index in range(si, len(self.segments)):
            lines, torn = self._segment_lines(index)
            name = self.segments[index][0].path.name
            for line_index in range(li if index == si else 0, len(lines)):
                yield _Line(pos, lines[line_index], f"{name} line {line_index + 1}")
                pos += 1
            if torn:
                yield _Line(pos, torn, f"{name} line {len(lines) + 1}", torn=True)
                pos += 1

    def _scan(self, start: tuple[int, int, int, bytes], anchor: Checkpoint | None) -> None:
        """Parse and check each record from ``start``; raise at the first inconsistency.

        Stops at ``anchor`` (raising if the head differs there) or, without one, at the end of the log.
        """
        si, li, pos, head = start
        window_start = pos
        lines = self._lines_from(si, li, pos)
        current = next(lines, None)
        previous: _Line | None = None
        while current is not None:
            following = next(lines, None)
            e = current.seq
            if current.torn:
                kind: ProblemKind = "truncation" if following is None else "modification"
                raise AuditVerificationError(
                    kind, e, "incomplete line (cut file or a write torn by a crash)", location=current.location
                )
            record = _parse(current.data)
            if record is None:
                raise AuditVerificationError(
                    "modification", e, "record is not a valid log record", location=current.location
                )
            seq, prev = record["seq"], record["prev"]
            if seq != e:
                self._bad_seq(current, seq, following, lines, anchor)
            if prev != head.hex():
                raise self._bad_prev(current, previous, record, following, anchor, window_start)
            head = chain_head(head, current.data)
            pos = e + 1
            if anchor is not None and pos == anchor.size:
                if head == anchor.head:
                    return
                raise self._anchor_mismatch(current, following, anchor, window_start)
            previous, current = current, following
        if anchor is not None:
            raise AuditVerificationError(
                "truncation",
                pos,
                f"a signed checkpoint covers {anchor.size} records but the log ends at seq {pos - 1}",
                location=f"checkpoint signed at {anchor.time}",
            )

    def _bad_seq(
        self, current: _Line, seq: int, following: _Line | None, rest: Iterator[_Line], anchor: Checkpoint | None
    ) -> None:
        e = current.seq
        next_record = _parse(following.data) if following is not None else None
        next_seq = next_record["seq"] if next_record is not None else None
        last_covered = following is None and anchor is not None and anchor.size == e + 1
        if next_seq == e + 1 or last_covered:
            raise AuditVerificationError(
                "modification", e, f"the record in this place carries seq {seq}", location=current.location
            )
        if seq > e:
            later = [following] if following is not None else []
            for index, line in enumerate(rest):
                if index >= _REORDER_WINDOW:
                    break
                later.append(line)
            for line in later:
                found = _parse(line.data)
                if found is not None and found["seq"] == e:
                    raise AuditVerificationError(
                        "reordering",
                        e,
                        f"seq {e} appears later ({line.location}); seq {seq} is in its place",
                        location=current.location,
                    )
            raise AuditVerificationError(
                "deletion", e, f"records {e} to {seq - 1} are missing", location=current.location
            )
        raise AuditVerificationError(
            "insertion", e, f"a record with seq {seq} appears where seq {e} belongs", location=current.location
        )

    def _bad_prev(
        self,
        current: _Line,
        previous: _Line | None,
        record: dict[str, Any],
        following: _Line | None,
        anchor: Checkpoint | None,
        window_start: int,
    ) -> AuditVerificationError:
        # The record does not commit to the chain so far. If it is consistent with what follows it, the
        # record before it was changed; otherwise this record's own prev field was.
        e = current.seq
        claimed = bytes.fromhex(record["prev"])
        own_head = chain_head(claimed, current.data)
        next_record = _parse(following.data) if following is not None and not following.torn else None
        if next_record is not None:
            consistent = next_record["prev"] == own_head.hex()
        elif anchor is not None and anchor.size == e + 1:
            consistent = own_head == anchor.head
        else:
            consistent = False
        if consistent and previous is not None and e > window_start:
            return AuditVerificationError(
                "modification",
                e - 1,
                f"this record's hash no longer matches the prev field of seq {e}",
                location=previous.location,
            )
        return AuditVerificationError(
            "modification", e, "prev does not match the hash of the records before", location=current.location
        )

    def _anchor_mismatch(
        self, current: _Line, following: _Line | None, anchor: Checkpoint, window_start: int
    ) -> AuditVerificationError:
        # Every record agreed with its neighbour, yet the head differs from the signed one: either the last
        # record before the checkpoint changed (its successor, if any, still commits to the original), or the
        # whole stretch since the previous checkpoint was rewritten consistently.
        e = current.seq
        next_record = _parse(following.data) if following is not None and not following.torn else None
        if next_record is None or next_record["prev"] == anchor.head.hex():
            return AuditVerificationError(
                "modification",
                e,
                f"the chain no longer matches the checkpoint signed at {anchor.time}",
                location=current.location,
            )
        return AuditVerificationError(
            "modification",
            window_start,
            f"records {window_start} to {e} were rewritten; only the checkpoint signed at {anchor.time} shows it",
        )

    def _unlocated(self, window_start: int, anchor: Checkpoint) -> AuditVerificationError:
        return AuditVerificationError(
            "modification", window_start, f"records up to {anchor.size - 1} do not match the signed checkpoint"
        )


def _parse(data: bytes) -> dict[str, Any] | None:
    """A record with an int seq, a 64-hex-digit prev and a time; None for anything else."""
    try:
        record = json.loads(data)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(record, dict):
        return None
    seq, prev = record.get("seq"), record.get("prev")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(record.get("time"), str):
        return None
    if not isinstance(prev, str) or len(prev) != 64:
        return None
    try:
        bytes.fromhex(prev)
    except ValueError:
        return None
    return record
