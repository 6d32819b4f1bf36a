"""Jobs keep working now that Ray runs as its own OS user: working_dir, a pip package, tasks, logs, the
dashboard; `down` then `up` again; and Ray's folders stay closed to everyone but Ray's user."""

from __future__ import annotations

import io
import json
import os
import pwd
import secrets
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from raywarden.cluster import lifecycle, raydir
from raywarden.doctor import run_doctor
from tests.conftest import free_port
from tests.support import Cluster, run_cli, start_cluster, stop_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="Ray runs as a user of its own only when started as root"),
]

CHECK = """import json, os, ray, six
ray.init()

@ray.remote
def task_uid():
    return os.getuid()

print("CHECK " + json.dumps({
    "uid": os.getuid(), "home": os.environ["HOME"], "cwd": os.getcwd(), "six": six.__version__,
    "marker": open("marker.txt").read().strip(), "task_uid": ray.get(task_uid.remote()),
}))
"""


def _ray_user(cluster: Cluster) -> pwd.struct_passwd:
    name = cluster.state.load_config().ray_user
    assert name
    return pwd.getpwnam(name)


def _wait(cluster: Cluster, sid: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline and status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(1)
        status = next((j["status"] for j in cluster.ray_jobs() if j.get("submission_id") == sid), "")
    return status


def _submit(cluster: Cluster, cert: tuple[str, str], files: dict[str, str], runtime_env: dict[str, Any]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    package = f"_ray_pkg_{secrets.token_hex(8)}.zip"
    url = f"{cluster.url}/api/packages/gcs/{package}"
    assert requests.put(url, data=buffer.getvalue(), cert=cert, verify=cluster.ca, timeout=60).status_code == 200
    sid = f"rayuser-{secrets.token_hex(4)}"
    body = {
        "entrypoint": "python check.py",
        "submission_id": sid,
        "runtime_env": {"working_dir": f"gcs://{package}", **runtime_env},
    }
    resp = requests.post(f"{cluster.url}/api/jobs/", json=body, cert=cert, verify=cluster.ca, timeout=60)
    assert resp.status_code == 200, resp.text
    return sid


def test_a_developers_job_with_working_dir_and_pip_runs_as_rays_user(cluster: Cluster) -> None:
    developer = cluster.issue(f"rayuser-dev-{secrets.token_hex(3)}", groups=("developers",))
    marker = secrets.token_hex(6)
    sid = _submit(cluster, developer, {"check.py": CHECK, "marker.txt": marker}, {"pip": ["six"]})
    status = _wait(cluster, sid)
    logs = requests.get(f"{cluster.url}/api/jobs/{sid}/logs", cert=developer, verify=cluster.ca, timeout=30)
    assert logs.status_code == 200
    assert status == "SUCCEEDED", logs.text[-3000:]
    line = next(x for x in logs.json()["logs"].splitlines() if x.startswith("CHECK "))
    found = json.loads(line[len("CHECK ") :])
    ray_user = _ray_user(cluster)
    assert found["uid"] == found["task_uid"] == ray_user.pw_uid
    assert found["home"] == str(cluster.state.ray_dir.parent / "home")  # root's, read-only (raydir.py)
    assert found["marker"] == marker and found["six"]
    assert found["cwd"].startswith(str(cluster.state.ray_temp_dir) + "/")
    # The dashboard, through the gateway, still reads Ray's state and its logs folder.
    for path in ("", "nodes?view=summary", "api/v0/cluster_metadata"):
        page = requests.get(f"{cluster.url}/dashboard/{path}", cert=cluster.admin_cert, verify=cluster.ca, timeout=60)
        assert page.status_code == 200, (path, page.text[:300])
    # Ray's workers, its runtime-env agent and the pip install all ran: its folders are still closed.
    _assert_sealed(cluster)


def _assert_sealed(cluster: Cluster) -> None:
    ray_user = _ray_user(cluster)
    temp = cluster.state.ray_temp_dir
    assert raydir.shared_folders(temp) == []
    session = (temp / "session_latest").resolve()
    for folder in (temp, session, *(session / rel for rel in raydir.SESSION_SHARED)):
        st = folder.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, ray_user.pw_gid, 0o770), folder
    ray_dir = cluster.state.ray_dir.stat()
    assert (ray_dir.st_uid, stat.S_IMODE(ray_dir.st_mode)) == (ray_user.pw_uid, 0o700)


@pytest.fixture
def second() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="rwt-"))
    try:
        yield start_cluster(root, port=free_port(), profile="second")
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def _uid_job(cluster: Cluster) -> int:
    result = run_cli(
        cluster, "job", "submit", "--", "python", "-c", "import os; print('UID', os.getuid())", timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return int(next(x for x in result.stdout.splitlines() if x.startswith("UID "))[4:])


def test_down_then_up_again(second: Cluster) -> None:
    ray_user = _ray_user(second)
    assert _uid_job(second) == ray_user.pw_uid
    folder = second.state.ray_dir
    assert (folder / "ray-token").read_text() == second.state.ray_token.read_text()
    lifecycle.down(second.state)
    # Ray's copies of its key and token go with it; the control plane keeps the originals.
    assert not (folder / "ray-token").exists() and not (folder / "node.key").exists()
    assert second.state.ray_token.exists() and second.state.node_key.exists()
    lifecycle.up(second.state, num_cpus=1)
    assert _uid_job(second) == ray_user.pw_uid
    _assert_sealed(second)
    report = run_doctor(second.state)
    for check in report.checks:
        if check.group == "separation":
            assert check.status == "pass", check
