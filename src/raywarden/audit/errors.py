"""Errors of the audit log: unavailable (fail closed), refused records, and failed verification."""

from __future__ import annotations

from typing import Literal

from raywarden.errors import RaywardenError

#: What ``verify`` found wrong, as named in reports and in ``--json`` output.
ProblemKind = Literal[
    "modification",  # a record's bytes differ from what was chained and signed
    "deletion",  # records are missing from the middle or the front of the log
    "insertion",  # a record appears that the writer never wrote at that position
    "reordering",  # records are present but out of order
    "truncation",  # records covered by a signed checkpoint are missing at the end
    "checkpoint",  # a checkpoint is unsigned, badly signed, malformed or out of order
]


class AuditUnavailable(RaywardenError):
    """The audit log cannot record anything: requests must be refused until it is reopened."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"audit log unavailable: {message}",
            hint=hint
            or "free disk space or fix permissions on the audit dir, then restart the gateway; "
            "requests are refused until the audit log can be written",
        )


class AuditRecordError(RaywardenError):
    """A record was refused before it reached the log (wrong type, reserved field, too large, secret key)."""


class AuditVerificationError(RaywardenError):
    """``verify`` found the log or its checkpoints inconsistent; ``kind`` and ``seq`` say what and where.

    ``seq`` is the first sequence number that can no longer be trusted.
    """

    def __init__(
        self,
        kind: ProblemKind,
        seq: int,
        detail: str,
        *,
        location: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = f" ({location})" if location else ""
        super().__init__(
            f"audit log verification failed: {kind} at seq {seq}{where}: {detail}",
            hint=hint
            or "treat the log as tampered with from this sequence number on; compare against an external "
            "copy of the checkpoints and keep the files as evidence",
        )
        self.kind: ProblemKind = kind
        self.seq = seq
        self.detail = detail
        self.location = location

    def to_dict(self) -> dict[str, object]:
        return {"ok": False, "kind": self.kind, "seq": self.seq, "detail": self.detail, "location": self.location}
