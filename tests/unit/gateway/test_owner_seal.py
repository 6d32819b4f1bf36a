"""The gateway believes a job's owner only with its own seal (gateway/owner_seal.py): forged, copied, moved or
missing seals make a job owned by no one, shown as submitted outside the gateway."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from raywarden.errors import ConfigError
from raywarden.gateway.owner_seal import (
    CLAIMED_KEY,
    OUTSIDE_KEY,
    OUTSIDE_TEXT,
    SEAL_KEY,
    OwnerSeal,
    load_or_create_seal_key,
)
from raywarden.policy.jobattrs import OWNER_KEY, job_attrs

pytestmark = pytest.mark.unit

ALICE = "spiffe://td/user/alice"
SEAL = OwnerSeal(b"s" * 32)


def _job(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "submission_id": "alice-nightly",
        "entrypoint": "python train.py",
        "runtime_env": {"pip": ["six"], "env_vars": {"TOKEN": "secret"}},
    }
    job["metadata"] = {
        OWNER_KEY: ALICE,
        SEAL_KEY: SEAL.seal("alice-nightly", ALICE, job["entrypoint"], job["runtime_env"]),
    }
    job.update(changes)
    return job


def test_a_sealed_job_keeps_its_owner_even_with_env_values_redacted() -> None:
    job = _job()
    assert SEAL.owner_of(job) == ALICE and SEAL.vouch(job) is job
    redacted = {**job, "runtime_env": {"pip": ["six"], "env_vars": {"TOKEN": "<redacted>"}}}
    assert SEAL.owner_of(redacted) == ALICE


@pytest.mark.parametrize(
    "changes",
    [
        {"metadata": {OWNER_KEY: ALICE}},  # no seal: submitted to Ray directly, or by an earlier release
        {"metadata": {OWNER_KEY: ALICE, SEAL_KEY: "A" * 43}},  # forged
        {"metadata": {OWNER_KEY: ALICE, SEAL_KEY: ""}},
        {"metadata": {OWNER_KEY: ALICE, SEAL_KEY: 7}},
        {"submission_id": "bob-copy"},  # alice's seal copied onto another submission
        {"entrypoint": "python steal.py"},  # ... onto another entrypoint
        {"runtime_env": {"pip": ["evil"], "env_vars": {"TOKEN": "secret"}}},  # ... with other packages
        {"runtime_env": {"pip": ["six"], "env_vars": {"TOKEN": "x", "PIP_INDEX_URL": "x"}}},
        {"metadata": "not an object"},
    ],
)
def test_anything_but_the_gateways_own_seal_makes_a_job_nobodys(changes: dict[str, Any]) -> None:
    job = _job(**changes)
    vouched = SEAL.vouch(job)
    assert SEAL.owner_of(job) is None
    assert OWNER_KEY not in vouched["metadata"] and SEAL_KEY not in vouched["metadata"]
    assert vouched["metadata"][OUTSIDE_KEY] == OUTSIDE_TEXT
    assert job_attrs("x", vouched)["owner"] == ""


def test_a_seal_under_another_key_is_refused_and_the_claim_is_kept_aside() -> None:
    job = _job()
    vouched = OwnerSeal(b"o" * 32).vouch(job)
    assert vouched["metadata"][CLAIMED_KEY] == ALICE and OWNER_KEY not in vouched["metadata"]
    # A second vouching (a record cached, then listed again) changes nothing more.
    assert OwnerSeal(b"o" * 32).vouch(vouched)["metadata"][OUTSIDE_KEY] == OUTSIDE_TEXT


def test_the_key_is_created_once_0600_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "owner-seal.key"
    key = load_or_create_seal_key(path)
    assert load_or_create_seal_key(path) == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("not hex\n")
    with pytest.raises(ConfigError, match="not an owner-seal key"):
        load_or_create_seal_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="accessible by other users"):
        load_or_create_seal_key(path)
