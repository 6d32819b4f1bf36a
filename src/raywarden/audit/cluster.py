"""Open a cluster's audit log with the settings from its state dir (one place, for every writer)."""

from __future__ import annotations

from raywarden.audit.keys import load_or_create_audit_key
from raywarden.audit.writer import AuditLog
from raywarden.config import ClusterConfig
from raywarden.state import StateDir


def open_cluster_audit(state: StateDir, config: ClusterConfig | None = None) -> AuditLog:
    config = config or state.load_config()
    return AuditLog.open(
        state.audit_dir,
        signing_key=load_or_create_audit_key(state.audit_key),
        checkpoint_every=config.audit_checkpoint_every,
        checkpoint_seconds=config.audit_checkpoint_seconds,
        rotate_bytes=config.audit_rotate_bytes,
        key_path=state.audit_key,
    )
