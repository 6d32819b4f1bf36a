"""Job owners the gateway wrote itself: a seal over each submission it forwards, checked wherever an owner is read.

A job's owner is metadata in Ray's record, and anyone with Ray's token (in the threat model: any job) can
submit to Ray directly with whatever metadata they like. So the gateway believes an owner only with its seal:
an HMAC, under a key only the control plane's user can read (``keys/owner-seal.key``, 0600), over the
submission id, the owner, the entrypoint and the runtime_env (env var values left out, as Ray may redact them),
so that a seal names one submission and moves to no other. A job without a valid seal is owned by no one and
shown as submitted outside the gateway (docs/threat-model.md), whatever owner its metadata claims.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from raywarden.errors import ConfigError
from raywarden.files import ensure_private_dir, read_private
from raywarden.policy.jobattrs import OWNER_KEY
from raywarden.secret import Secret
from raywarden.state import StateDir

SEAL_KEY = "raywarden.owner_seal"
OUTSIDE_KEY = "raywarden.outside"  # set by the gateway on records it relays: the job has no valid seal
CLAIMED_KEY = "raywarden.claimed_owner"  # what such a job's metadata said its owner was, for admins to see
OUTSIDE_TEXT = "submitted outside the gateway"
_CONTEXT = "raywarden-owner-seal/1"
_KEY_BYTES = 32


def seal_key_path(state: StateDir) -> Path:
    return state.keys_dir / "owner-seal.key"


def load_or_create_seal_key(path: Path) -> bytes:
    """The control plane's sealing key, created on first use (exclusively: two processes starting at once end up
    with one key)."""
    if not path.exists():
        ensure_private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".owner-seal.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_hex(_KEY_BYTES).encode() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    try:
        key = bytes.fromhex(read_private(path).decode().strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise ConfigError(f"{path} is not an owner-seal key", hint=f"remove {path}: jobs sealed with it become unowned")
    return key


_installed: list[OwnerSeal] = []


def install(seal: OwnerSeal) -> None:
    """The seal this gateway process checks owners with (build_app installs the cluster's)."""
    _installed[:] = [seal]


def current() -> OwnerSeal:
    """The installed seal; before any is installed, one under a key nobody has, so that no owner verifies."""
    if not _installed:
        _installed.append(OwnerSeal(secrets.token_bytes(_KEY_BYTES)))
    return _installed[0]


class OwnerSeal:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_state(cls, state: StateDir) -> OwnerSeal:
        return cls(load_or_create_seal_key(seal_key_path(state)))

    def seal(self, submission_id: str, owner: str, entrypoint: str, runtime_env: Any) -> str:
        message = json.dumps(
            [_CONTEXT, submission_id, owner, entrypoint, _env_shape(runtime_env)],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def owner_of(self, info: dict[str, Any]) -> str | None:
        """The owner of Ray's job record ``info`` if the gateway sealed it, else None (owned by no one)."""
        metadata = info.get("metadata")
        if not isinstance(metadata, dict):
            return None
        owner, seal, entrypoint = metadata.get(OWNER_KEY), metadata.get(SEAL_KEY), info.get("entrypoint")
        submission_id = info.get("submission_id")
        if not all(isinstance(v, str) and v for v in (owner, seal, entrypoint, submission_id)):
            return None
        expected = self.seal(str(submission_id), str(owner), str(entrypoint), info.get("runtime_env"))
        return str(owner) if Secret(expected).matches(str(seal)) else None

    def vouch(self, info: dict[str, Any]) -> dict[str, Any]:
        """Ray's record as the gateway shows and decides on it: the owner only if sealed; otherwise no owner, the
        claimed one kept aside under ``CLAIMED_KEY`` and the job marked as submitted outside the gateway."""
        if self.owner_of(info) is not None:
            return info
        metadata = info.get("metadata")
        return _outside(info, metadata.get(OWNER_KEY) if isinstance(metadata, dict) else None)

    def vouch_all(self, jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
        """Every record vouched for, and whether any changed."""
        vouched = [self.vouch(j) for j in jobs]
        return vouched, any(a is not b for a, b in zip(vouched, jobs, strict=True))


def _outside(info: dict[str, Any], claimed: Any) -> dict[str, Any]:
    metadata = info.get("metadata")
    kept = {k: v for k, v in metadata.items() if k not in (OWNER_KEY, SEAL_KEY)} if isinstance(metadata, dict) else {}
    kept[OUTSIDE_KEY] = OUTSIDE_TEXT
    if isinstance(claimed, str):
        kept[CLAIMED_KEY] = claimed
    return {**info, "metadata": kept}


def _env_shape(runtime_env: Any) -> Any:
    """The runtime_env with env var values left out: Ray shows them redacted to browsers."""
    if not isinstance(runtime_env, dict):
        return runtime_env
    shaped = copy.deepcopy(runtime_env)
    if isinstance(shaped.get("env_vars"), dict):
        shaped["env_vars"] = sorted(shaped["env_vars"])
    return shaped
