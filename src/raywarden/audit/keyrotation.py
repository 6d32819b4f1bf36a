"""`raywarden audit rotate-key`: a new Ed25519 audit key takes over the log at one point signed by both keys.

The new key is written next to the old one first (``audit-ed25519.key.next``, 0600); under the writers' lock
the log gets a ``key.rotate`` record, the old key's last checkpoint and the rotation line
(audit/keychain.py); then the new key replaces the old one in the key file and in the audit dir's public key
file. Running gateways read the new key from the key file when they see the rotation line. A crash between
the rotation line and the rename is finished by the next writer, which finds the new key in the ``.next`` file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit.cluster import open_cluster_audit
from raywarden.audit.keychain import KeyRotation, newest_key_id
from raywarden.audit.keys import audit_key_fingerprint, audit_public_key_pem
from raywarden.audit.layout import CHECKPOINTS_NAME, PUBLIC_KEY_NAME, read_last_line
from raywarden.audit.logfiles import staged_key_path
from raywarden.config import ClusterConfig
from raywarden.errors import RaywardenError
from raywarden.files import fsync_dir, write_private, write_public
from raywarden.state import StateDir


def rotate_audit_key(state: StateDir, config: ClusterConfig, *, actor: str) -> KeyRotation:
    """Rotate the cluster's audit key; the old private key is gone afterwards (its public key stays in the log)."""
    lock = os.open(state.keys_dir / ".audit-rotate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one rotation at a time: they share the staging file
        return _rotate(state, config, actor)
    finally:
        os.close(lock)


def _rotate(state: StateDir, config: ClusterConfig, actor: str) -> KeyRotation:
    new = Ed25519PrivateKey.generate()
    staged = staged_key_path(state.audit_key)
    pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(staged, pem)

    def install() -> None:
        os.replace(staged, state.audit_key)
        fsync_dir(state.audit_key.parent)
        write_public(state.audit_dir / PUBLIC_KEY_NAME, audit_public_key_pem(new).encode("ascii"))

    try:
        audit = open_cluster_audit(state, config)
        try:
            return audit.rotate_key(new, install=install, actor=actor)
        finally:
            audit.close()
    except RaywardenError:
        if not _log_names(state, audit_key_fingerprint(new)):
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()  # the log never named it: nothing will look for it
        raise


def _log_names(state: StateDir, key_id: str) -> bool:
    path = state.audit_dir / CHECKPOINTS_NAME
    try:
        line = read_last_line(path, path.stat().st_size)
        return line is not None and newest_key_id(line)[1] == key_id
    except (OSError, RaywardenError):
        return False
