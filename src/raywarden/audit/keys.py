"""The Ed25519 audit key: created once (0600), loaded, and shown as a public key and fingerprint."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from raywarden.errors import ConfigError, PKIError
from raywarden.files import ensure_private_dir, read_private, write_private

AuditKey = Ed25519PrivateKey | Ed25519PublicKey


def load_or_create_audit_key(path: Path) -> Ed25519PrivateKey:
    """Load the audit signing key at ``path``, creating it (0600, in a 0700 folder) on first use.

    Creation holds an exclusive lock on the folder, so two processes starting at once agree on one key.
    """
    ensure_private_dir(path.parent)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            write_private(
                path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            return key
    finally:
        os.close(dir_fd)  # closing the descriptor releases the lock
    return load_audit_key(path)


def load_audit_key(path: Path) -> Ed25519PrivateKey:
    """Load an existing audit signing key; refuse one others can read or that is not Ed25519."""
    data = read_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PKIError(f"{path} is not a readable PEM private key", hint="restore it from backup") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PKIError(f"{path} is not an Ed25519 key", hint="the audit key must be Ed25519")
    return key


def load_audit_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM public key (as printed by ``raywarden status``) to verify checkpoints against."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}", hint="check the path") from None
    if b"PRIVATE KEY" in data:
        raise ConfigError(
            f"{path} holds a private key",
            hint="pass the public key printed by `raywarden status`; keep the private key where it is",
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not a PEM public key", hint="use the key printed by `raywarden status`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key", hint="the audit key is Ed25519")
    return key


def public_key_of(key: AuditKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def audit_public_key_pem(key: AuditKey | Path) -> str:
    """The audit public key as PEM (SubjectPublicKeyInfo), for ``raywarden status`` and external copies.

    Given a path, the private key there is loaded but never created.
    """
    if isinstance(key, Path):
        key = load_audit_key(key)
    pem = public_key_of(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")


def audit_key_fingerprint(key: AuditKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key; checkpoints name their key by it."""
    raw = public_key_of(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()
