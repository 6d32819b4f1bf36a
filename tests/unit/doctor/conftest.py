"""A fresh, never-started cluster state dir per test, with RAYWARDEN_HOME inside tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.state import StateDir

TD = "doctor.test"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAYWARDEN_PROFILE", raising=False)
    monkeypatch.delenv("RAYWARDEN_STATE_DIR", raising=False)
    target = StateDir(tmp_path / "state")
    init_state(
        target,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=18443)),
        admin_name="admin",
        profile_name="doc",
    )
    return target
