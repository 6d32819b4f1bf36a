"""Replay: a job stops Ray's dashboard and listens on its loopback port, answering the dashboard's page with a
script of its own. The gateway serves the dashboard's page and scripts from the installed Ray package, so the
fake's script never runs in the gateway's origin; what the fake answers to API calls stays Ray-privileged data
(docs/threat-model.md), decided and filtered as ever: an owner it claims is no owner."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from raywarden.cluster.runstate import read_run_state
from raywarden.gateway.dashboard_assets import build_dir
from tests import attack_jobs
from tests.conftest import free_port
from tests.support import Cluster, start_cluster, stop_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="Ray runs as a user of its own only when started as root"),
]

# The attacker's job: SIGTERM the dashboard, bind its port, answer with a page that loads a script of its own.
FAKE = """import json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port = int(sys.argv[1])
temp = os.path.dirname(os.environ["RAY_AUTH_TOKEN_PATH"]) + "/tmp"
for p in os.listdir("/proc"):
    if not p.isdigit(): continue
    try: cmd = [c.decode() for c in open(f"/proc/{p}/cmdline", "rb").read().split(b"\\0")]
    except Exception: continue
    if any(c.endswith("dashboard/dashboard.py") for c in cmd) and f"--temp-dir={temp}" in cmd:
        os.kill(int(p), signal.SIGTERM)
PAGE = b'<!doctype html><script src="/dashboard/static/js/main.pwn.js"></script>FAKE-DASHBOARD'
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/api/jobs/"):
            body = json.dumps([{"type": "SUBMISSION", "job_id": None, "submission_id": "bob-loot", "status": "RUNNING",
                "entrypoint": "x", "metadata": {"raywarden.owner": sys.argv[2]}, "runtime_env": {}}]).encode()
            ctype = "application/json"
        else:
            pwn = (b"alert(document.cookie)", "application/javascript")
            body, ctype = pwn if "pwn" in self.path else (PAGE, "text/html")
        self.send_response(200); self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
for _ in range(200):
    try:
        srv = ThreadingHTTPServer(("127.0.0.1", port), H); break
    except OSError:
        time.sleep(0.1)
else:
    raise SystemExit("could not bind")
print("RESULT " + json.dumps({"serving": port}), flush=True)
srv.timeout = 1
deadline = time.time() + 240
while time.time() < deadline:
    srv.handle_request()
"""


@pytest.fixture
def own() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="rwt-"))
    try:
        yield start_cluster(root, port=free_port(), profile="fakedash")
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def test_a_fake_dashboard_puts_no_script_in_the_gateways_origin(own: Cluster) -> None:
    run = read_run_state(own.state)
    assert run is not None
    name = f"bob-{secrets.token_hex(3)}"
    bob = own.issue(name, groups=("developers",))
    bob_spiffe = f"spiffe://{own.state.load_config().trust_domain}/user/{name}"
    attack_jobs.submit(own, bob, FAKE, str(run.ports.dashboard), bob_spiffe)
    admin = own.admin_cert
    deadline = time.monotonic() + 240
    seen = ""
    while time.monotonic() < deadline:  # until the fake answers on Ray's port
        try:
            seen = requests.get(f"http://127.0.0.1:{run.ports.dashboard}/", timeout=5).text
        except requests.RequestException:
            seen = ""
        if "FAKE-DASHBOARD" in seen:
            break
        time.sleep(1)
    assert "FAKE-DASHBOARD" in seen
    build = build_dir()
    assert build is not None
    page = requests.get(f"{own.url}/dashboard/", cert=admin, verify=own.ca, timeout=30)
    assert page.status_code == 200 and page.content == (build / "index.html").read_bytes()
    script = requests.get(f"{own.url}/dashboard/static/js/main.pwn.js", cert=admin, verify=own.ca, timeout=30)
    assert script.status_code == 404 and b"alert" not in script.content
    # The fake's job list: an owner it claims is no owner, so bob cannot use it to reach the job.
    listed = requests.get(f"{own.url}/api/jobs/", cert=bob, verify=own.ca, timeout=30)
    assert listed.status_code == 200 and "bob-loot" not in listed.text
