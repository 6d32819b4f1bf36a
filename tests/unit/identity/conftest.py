"""A real state dir (CAs, identity store, audit log) without Ray, for identity unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.state import StateDir

TD = "unit.raywarden"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDir]:
    before = os.environ.get("RAYWARDEN_HOME")
    os.environ["RAYWARDEN_HOME"] = str(tmp_path / "home")
    try:
        target = StateDir(tmp_path / "state")
        init_state(
            target,
            ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=1)),
            admin_name="admin",
            profile_name="unit",
        )
        yield target
    finally:
        if before is None:
            os.environ.pop("RAYWARDEN_HOME", None)
        else:
            os.environ["RAYWARDEN_HOME"] = before
