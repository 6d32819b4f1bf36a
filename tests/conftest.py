"""Shared fixtures: one real raywarden cluster (Ray head + gateway) for the whole test session."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Cluster, start_cluster, stop_cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Ray takes seconds to start: every integration test that can share a cluster shares this one."""
    root = Path(tempfile.mkdtemp(prefix="rwt-"))
    previous = os.environ.get("RAYWARDEN_HOME")
    try:
        running = start_cluster(root, port=free_port())
        os.environ["RAYWARDEN_HOME"] = str(running.home)
        yield running
    finally:
        if previous is None:
            os.environ.pop("RAYWARDEN_HOME", None)
        else:
            os.environ["RAYWARDEN_HOME"] = previous
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)
