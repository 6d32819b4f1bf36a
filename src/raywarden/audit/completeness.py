"""Whether every gateway request in the log has both its records: the decision (``kind: request``) and the
outcome (``kind: outcome``), joined by ``request_id``.

The decision record is durable before anything is forwarded; the outcome record is group-committed after
the answer. A gateway killed mid-request (SIGKILL, power loss) therefore leaves decisions without outcomes:
the log is *incomplete* for those requests, which is not tampering, since the chain and the signatures
verify. docs/audit.md, "Durability".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raywarden.audit.reader import RecordFilter, iter_records

MAX_LISTED = 20


@dataclass(frozen=True)
class Completeness:
    requests: int  # decision records
    without_outcome: int  # decisions whose outcome is not in the log (in flight at a crash, or now)
    outcome_only: int  # outcomes without a decision (never written by the gateway: worth a look)
    examples: tuple[str, ...]  # request ids of decisions without an outcome, first ones
    last_seq: int | None  # seq of the newest decision without an outcome

    @property
    def complete(self) -> bool:
        return not self.without_outcome and not self.outcome_only

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "examples": list(self.examples), "complete": self.complete}


def completeness(audit_dir: Path, since_seq: int = 0) -> Completeness:
    open_requests: dict[str, int] = {}
    requests = outcome_only = 0
    for _, record in iter_records(audit_dir, RecordFilter()):
        seq = record.get("seq")
        if not isinstance(seq, int) or seq < since_seq:
            continue
        kind, request_id = record.get("kind"), record.get("request_id")
        if not isinstance(request_id, str):
            continue
        if kind == "request":
            requests += 1
            open_requests[request_id] = seq
        elif kind == "outcome" and open_requests.pop(request_id, None) is None:
            outcome_only += 1
    ordered = sorted(open_requests.items(), key=lambda item: item[1])
    return Completeness(
        requests,
        len(ordered),
        outcome_only,
        tuple(rid for rid, _ in ordered[:MAX_LISTED]),
        ordered[-1][1] if ordered else None,
    )
