"""The audit key: created once with owner-only permissions, reloaded, shown as a public key."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit import audit_key_fingerprint, audit_public_key_pem, load_audit_public_key, load_or_create_audit_key
from raywarden.errors import ConfigError

pytestmark = pytest.mark.unit


def test_created_0600_in_0700_folder_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit-ed25519.key"
    key = load_or_create_audit_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create_audit_key(path)
    assert audit_public_key_pem(again) == audit_public_key_pem(key)


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.key"
    keys: list[Ed25519PrivateKey] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_audit_key(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({audit_key_fingerprint(k) for k in keys}) == 1


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    load_or_create_audit_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="accessible by other users"):
        load_or_create_audit_key(path)


def test_public_key_pem_round_trips_and_refuses_private_keys(tmp_path: Path) -> None:
    key = load_or_create_audit_key(tmp_path / "k")
    pem = audit_public_key_pem(tmp_path / "k")
    assert pem.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in pem
    (tmp_path / "pub.pem").write_text(pem)
    assert audit_key_fingerprint(load_audit_public_key(tmp_path / "pub.pem")) == audit_key_fingerprint(key)
    with pytest.raises(ConfigError, match="private key"):
        load_audit_public_key(tmp_path / "k")


def test_public_key_from_missing_path_does_not_create_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        audit_public_key_pem(tmp_path / "absent.key")
    assert not (tmp_path / "absent.key").exists()
