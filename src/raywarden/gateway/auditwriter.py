"""The gateway's audit log, measured: fsync latency, batch sizes and queue depth for its metrics."""

from __future__ import annotations

from typing import cast

from raywarden.audit import AuditLog
from raywarden.audit.keys import load_or_create_audit_key
from raywarden.audit.waiters import Item
from raywarden.config import ClusterConfig
from raywarden.gateway.telemetry import AUDIT_BATCH, AUDIT_FSYNC, AUDIT_QUEUE
from raywarden.state import StateDir


class MeteredAuditLog(AuditLog):
    def _process(self, batch: list[Item], *, final: bool) -> None:
        if batch:  # a turn for a due checkpoint alone is not a group commit
            AUDIT_BATCH.observe(len(batch))
        AUDIT_QUEUE.set(len(self._queue) + len(batch))
        try:
            super()._process(batch, final=final)
        finally:
            AUDIT_QUEUE.set(len(self._queue))

    def _append_took(self, seconds: float) -> None:
        AUDIT_FSYNC.observe(seconds)


def open_gateway_audit(state: StateDir, config: ClusterConfig) -> MeteredAuditLog:
    """The cluster's log with the state dir's settings (as raywarden.audit.cluster opens it), measured."""
    audit = MeteredAuditLog.open(
        state.audit_dir,
        signing_key=load_or_create_audit_key(state.audit_key),
        checkpoint_every=config.audit_checkpoint_every,
        checkpoint_seconds=config.audit_checkpoint_seconds,
        rotate_bytes=config.audit_rotate_bytes,
        key_path=state.audit_key,  # follows `raywarden audit rotate-key` (audit/keyrotation.py)
    )
    return cast(MeteredAuditLog, audit)  # ``open`` builds ``cls``
