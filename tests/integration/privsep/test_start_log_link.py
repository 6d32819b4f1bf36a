"""Replay: a job replaces Ray's start log with a link to a root-owned file, then the admin runs `down` and `up`.

Before the fix, `up` (as root) opened ID/ray/ray-start.log, a name in Ray's own folder, following links, appended
Ray's output to whatever it pointed at and handed that file to Ray's user. Now the start log lives in a folder
only the control plane may write, is opened without following links, and stays the control plane's."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from raywarden.cluster import lifecycle
from tests import attack_jobs
from tests.conftest import free_port
from tests.support import Cluster, start_cluster, stop_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="Ray runs as a user of its own only when started as root"),
]

# What a job of Ray's user can do to the start log: the old name in Ray's folder and the name next to it.
PLANT = """import json, os, sys
victim = sys.argv[1]
folder = os.path.dirname(os.environ["RAY_AUTH_TOKEN_PATH"])
result = {}
for log in (os.path.join(folder, "ray-start.log"), os.path.join(os.path.dirname(folder), "ray-start.log")):
    try:
        if os.path.lexists(log):
            os.unlink(log)
        os.symlink(victim, log)
        result[log] = "planted"
    except OSError as exc:
        result[log] = exc.strerror
print("RESULT " + json.dumps(result))
"""


@pytest.fixture
def own() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="rwt-"))
    try:
        yield start_cluster(root, port=free_port(), profile="startlog")
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def test_a_linked_start_log_never_reaches_a_root_file(own: Cluster, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's own\n")
    os.chmod(victim, 0o600)
    os.chmod(tmp_path, 0o755)  # noqa: S103 (Ray's user may reach the name; the file stays root's, 0600)
    bob = attack_jobs.developer(own)
    planted = attack_jobs.run(own, bob, PLANT, str(victim))
    ray_dir = own.state.ray_dir
    assert planted[str(ray_dir / "ray-start.log")] == "planted"  # Ray's own folder is Ray's to change
    assert planted[str(ray_dir.parent / "ray-start.log")] == "Permission denied"
    lifecycle.down(own.state)
    lifecycle.up(own.state, num_cpus=1)
    st = victim.stat()
    assert victim.read_text() == "root's own\n"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    log = ray_dir.parent / "ray-start.log"
    st = log.lstat()
    assert stat.S_ISREG(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert "Ray runtime started" in log.read_text()
    # The link the job left is gone: nothing names a start log in Ray's folder any more.
    assert not os.path.lexists(ray_dir / "ray-start.log")
