"""Fixtures for audit tests: a signing key and small, fully checkpointed logs to tamper with."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit import AuditLog
from tests.unit.audit.audit_support import MakeLog, request_record


@pytest.fixture(scope="session")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def make_log(tmp_path: Path, key: Ed25519PrivateKey) -> MakeLog:
    """Write ``n`` records with sync appends and close the log (final checkpoint); return the audit dir."""

    def make(n: int = 30, *, checkpoint_every: int = 10, rotate_bytes: int = 64 * 1024 * 1024) -> Path:
        audit_dir = tmp_path / "audit"
        with AuditLog.open(
            audit_dir, signing_key=key, checkpoint_every=checkpoint_every, rotate_bytes=rotate_bytes
        ) as log:
            for i in range(n):
                log.append(request_record(i))
        return audit_dir

    return make


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a really full filesystem. Needs root (and a kernel that lets us mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
