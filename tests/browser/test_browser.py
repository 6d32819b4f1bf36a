"""The Ray dashboard and raywarden's console in a real browser (Debian's chromium through Playwright),
against the session's real cluster: sign-in with a one-time link, live dashboard data, per-user job lists,
runtime-env redaction, sign-out, cross-origin attacks, DNS rebinding and profiling permissions.

Chromium trusts the cluster's access CA through an NSS database in its HOME (no ignore_https_errors), so a
wrong gateway certificate would fail these tests too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from raywarden.cluster import runstate
from raywarden.cluster.procs import cmdline
from raywarden.cluster.ray_head import cluster_pids
from tests.browser.browser_support import chromium, missing_browser, nss_home, shot, sign_in, signin_path
from tests.support import Cluster, run_cli

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")]
SESSION_COOKIE = "__Host-raywarden-session"
SLEEPER = 'python -c "import time; time.sleep(900)"'


class World:
    """Principals, their certificates and one running job each, shared by the tests of this module."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        tag = secrets.token_hex(3)
        self.dev1 = cluster.issue(f"bdev1-{tag}", groups=("developers",))
        self.dev2 = cluster.issue(f"bdev2-{tag}", groups=("developers",))
        self.viewer = cluster.issue(f"bview-{tag}", groups=("viewers",))
        self.admin = cluster.admin_cert
        self.names = {"dev1": f"bdev1-{tag}", "dev2": f"bdev2-{tag}", "viewer": f"bview-{tag}"}
        self.secret = f"hunter2-{tag}"
        self.job1 = self.submit(self.dev1, f"brw-dev1-{tag}", {"MY_SECRET": self.secret})
        self.job2 = self.submit(self.dev2, f"brw-dev2-{tag}", {})

    def submit(self, cert: tuple[str, str], sid: str, env: dict[str, str]) -> str:
        body = {"entrypoint": SLEEPER, "submission_id": sid, "runtime_env": {"env_vars": env}}
        resp = requests.post(f"{self.cluster.url}/api/jobs/", json=body, cert=cert, verify=self.cluster.ca, timeout=60)
        assert resp.status_code == 200, resp.text
        return sid

    def link(self, cert: tuple[str, str]) -> str:
        return signin_path(self.cluster.url, self.cluster.ca, cert)

    def ray_job(self, sid: str) -> dict[str, Any] | None:
        return next((j for j in self.cluster.ray_jobs() if j.get("submission_id") == sid), None)

    def stop_jobs(self) -> None:
        for sid, cert in ((self.job1, self.dev1), (self.job2, self.dev2)):
            requests.post(f"{self.cluster.url}/api/jobs/{sid}/stop", cert=cert, verify=self.cluster.ca, timeout=60)


@pytest.fixture(scope="module")
def world(cluster: Cluster) -> Iterator[World]:
    made = World(cluster)
    try:
        yield made
    finally:
        made.stop_jobs()


@pytest.fixture(scope="module")
def browser(cluster: Cluster) -> Iterator[Any]:
    with chromium(nss_home(cluster.root, cluster.ca)) as launched:
        yield launched


def _page(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    return context.new_page()


def _records_since(cluster: Cluster, start: int) -> list[dict[str, Any]]:
    return cluster.audit_records()[start:]


def _fetch(page: Any, path: str) -> dict[str, Any]:
    """A same-origin fetch() from inside the page (what the dashboard's own XHRs do)."""
    result: dict[str, Any] = page.evaluate(
        "async (p) => { const r = await fetch(p); return {status: r.status, text: await r.text()}; }", path
    )
    return result


def test_sign_in_dashboard_jobs_and_sign_out(cluster: Cluster, world: World, browser: Any) -> None:
    url, start = cluster.url, len(cluster.audit_records())
    link = world.link(world.dev1)
    page = _page(browser)
    sign_in(page, url, link)
    page.get_by_text(f"spiffe://test.raywarden/user/{world.names['dev1']}").wait_for()
    assert "developers" in page.inner_text("main")
    shot(page, "console-whoami")
    cookie = next(c for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["expires"] - time.time() <= 8 * 3600 + 60

    # The link works once: a second browser gets the refusal page, and no session.
    other = _page(browser)
    other.goto(url + link)
    other.get_by_role("button", name="Sign in").click()
    other.get_by_text("invalid, expired or already used").wait_for()
    assert not [c for c in other.context.cookies() if c["name"] == SESSION_COOKIE]

    # Ray's dashboard through the gateway, with live cluster data.
    page.goto(f"{url}/dashboard/#/overview")
    page.get_by_text("Node Status").wait_for(timeout=30_000)
    expect(page.locator("body")).to_contain_text("node_", timeout=30_000)
    assert "Authentication Token Required" not in page.inner_text("body")
    shot(page, "dashboard-overview")

    # The jobs page lists the user's own job, not another developer's.
    page.goto(f"{url}/dashboard/#/jobs")
    page.get_by_text(world.job1).first.wait_for(timeout=30_000)
    page.wait_for_load_state("networkidle")
    assert world.job2 not in page.content()
    shot(page, "dashboard-jobs")
    page.goto(f"{url}/dashboard/#/cluster")
    expect(page.locator("body")).to_contain_text("127.0.0.1", timeout=30_000)
    shot(page, "dashboard-cluster")

    page.goto(f"{url}/ui/jobs")
    assert world.job1 in page.inner_text("main") and world.job2 not in page.inner_text("main")
    shot(page, "console-my-jobs")

    # Sign out: the cookie is cleared and the server-side session is gone for good.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{url}/ui/signin")
    assert not [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    replay = requests.get(
        f"{url}/dashboard/api/jobs/",
        headers={"Cookie": f"{SESSION_COOKIE}={cookie['value']}"},
        verify=cluster.ca,
        timeout=30,
    )
    assert replay.status_code == 401

    records = _records_since(cluster, start)
    spiffe = f"spiffe://test.raywarden/user/{world.names['dev1']}"
    session_requests = [r for r in records if r.get("auth_method") == "session" and r.get("principal") == spiffe]
    assert any(r.get("path") == "/dashboard/api/jobs/" and r.get("decision") == "allow" for r in session_requests)
    assert all(r.get("session_ref") for r in session_requests if r.get("kind") == "request")
    assert any(r.get("event") == "session.start" for r in records)
    assert any(r.get("event") == "session.refused" and "already used" in r.get("reason", "") for r in records)
    assert any(r.get("event") == "session.end" and r.get("session_ref") for r in records)
    assert any(
        r.get("path") == "/dashboard/api/jobs/" and r.get("status") == 401 and "ended" in r.get("reason", "")
        for r in records
    )


def test_runtime_env_values_are_hidden_from_a_non_owner(cluster: Cluster, world: World, browser: Any) -> None:
    url = cluster.url
    viewer = _page(browser)
    sign_in(viewer, url, world.link(world.viewer))
    viewer.goto(f"{url}/dashboard/#/jobs/{world.job1}")
    viewer.get_by_text("Runtime environment").wait_for(timeout=30_000)
    viewer.get_by_text("View", exact=True).first.click()
    viewer.get_by_text("MY_SECRET").first.wait_for(timeout=30_000)
    assert world.secret not in viewer.inner_text("body")
    shot(viewer, "dashboard-runtime-env-viewer")
    for path in (
        f"api/jobs/{world.job1}",
        "api/jobs/",
        "api/v0/tasks?detail=1&limit=1000",
        "api/v0/actors?detail=1&limit=1000",
        "api/v0/jobs?detail=1&limit=1000",
        "api/v0/runtime_envs?detail=1&limit=1000",
    ):
        answer = _fetch(viewer, path)
        assert answer["status"] == 200, (path, answer)
        assert world.secret not in answer["text"], path

    # The owner holds "jobs.read_env" on the job and sees the value; another developer does not see the job.
    owner = _page(browser)
    sign_in(owner, url, world.link(world.dev1))
    owner.goto(f"{url}/dashboard/#/jobs/{world.job1}")
    owner.get_by_text("Runtime environment").wait_for(timeout=30_000)
    assert world.secret in _fetch(owner, f"api/jobs/{world.job1}")["text"]
    # Developers hold no "dashboard.logs" (every worker log), but their own job's driver log is "jobs.logs".
    expect(owner.locator("body")).to_contain_text(f"Running entrypoint for job {world.job1}", timeout=30_000)
    shot(owner, "dashboard-job-detail-owner")
    stranger = _page(browser)
    sign_in(stranger, url, world.link(world.dev2))
    stranger.goto(f"{url}/dashboard/")
    assert _fetch(stranger, f"api/jobs/{world.job1}")["status"] == 404
    node = _node_id(cluster)
    assert (
        _fetch(stranger, f"api/v0/logs/file?node_id={node}&filename=job-driver-{world.job1}.log&lines=10")["status"]
        == 403
    )
    assert world.job1 not in _fetch(stranger, "api/jobs/")["text"]


ATTACK_PAGE = """<!doctype html><html><body><h1>cute cats</h1>
<iframe name="sink" title="sink"></iframe>
<form id="stopform" method="POST" action="{gw}/api/jobs/{sid}/stop" target="sink"></form>
<form id="submitform" method="POST" action="{gw}/dashboard/api/jobs/" target="sink" enctype="text/plain">
<input name='{{"entrypoint":"echo pwned","submission_id":"{evil}","x":"' value='"}}'></form>
<script>
const G = "{gw}", out = {{}};
async function attempt(name, path, init) {{
  try {{ const r = await fetch(G + path, Object.assign({{credentials: "include"}}, init));
         out[name] = "status " + r.status + " " + (await r.text()).slice(0, 200); }}
  catch (e) {{ out[name] = "error " + e; }}
}}
(async () => {{
  const submit = JSON.stringify({{entrypoint: "echo pwned", submission_id: "{evil}"}});
  await attempt("submit_api", "/api/jobs/", {{method: "POST", mode: "no-cors", body: submit,
                headers: {{"content-type": "text/plain"}}}});
  await attempt("submit_dash", "/dashboard/api/jobs/", {{method: "POST", mode: "no-cors", body: submit}});
  await attempt("stop", "/api/jobs/{sid}/stop", {{method: "POST", mode: "no-cors"}});
  await attempt("stop_dash", "/dashboard/api/jobs/{sid}/stop", {{method: "POST", mode: "no-cors"}});
  await attempt("delete", "/api/jobs/{sid}", {{method: "DELETE"}});
  await attempt("delete_dash", "/dashboard/api/jobs/{sid}", {{method: "DELETE"}});
  await attempt("read", "/dashboard/api/jobs/", {{}});
  await attempt("read_job", "/dashboard/api/jobs/{sid}", {{}});
  document.getElementById("submitform").submit();
  await new Promise(r => setTimeout(r, 500));
  document.getElementById("stopform").submit();
  await new Promise(r => setTimeout(r, 1500));
  window.results = out;
}})();
</script></body></html>"""


def _serve(html: str) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_another_origin_cannot_submit_stop_delete_or_read(cluster: Cluster, world: World, browser: Any) -> None:
    url = cluster.url
    evil = f"evil-{secrets.token_hex(3)}"
    # The victim is an admin, signed in: the policy would allow everything, only the browser checks stand.
    page = _page(browser)
    sign_in(page, url, world.link(world.admin))
    page.goto(f"{url}/dashboard/#/jobs")
    page.get_by_text(world.job1).first.wait_for(timeout=30_000)
    start = len(cluster.audit_records())  # from here on, only the attack page acts
    server, attacker = _serve(ATTACK_PAGE.format(gw=url, sid=world.job1, evil=evil))
    try:
        attack = page.context.new_page()
        attack.goto(attacker + "/")
        attack.wait_for_function("window.results !== undefined", timeout=30_000)
        results: dict[str, str] = attack.evaluate("window.results")
    finally:
        server.shutdown()
        server.server_close()
    # Nothing was read: without CORS headers the browser hides every answer from the foreign page.
    assert results["read"].startswith("error"), results
    assert results["read_job"].startswith("error"), results
    # Nothing changed in Ray.
    time.sleep(1)
    assert world.ray_job(evil) is None
    job = world.ray_job(world.job1)
    assert job is not None and job["status"] in ("PENDING", "RUNNING"), job
    # Each attempt that reached the gateway was refused and audited.
    records = [r for r in _records_since(cluster, start) if r.get("kind") == "request"]
    refused = {(r["method"], r["path"]): r for r in records if r.get("decision") == "deny"}
    for method, path in (
        ("POST", "/api/jobs/"),
        ("POST", "/dashboard/api/jobs/"),
        ("POST", f"/api/jobs/{world.job1}/stop"),
        ("POST", f"/dashboard/api/jobs/{world.job1}/stop"),
    ):
        assert (method, path) in refused, (method, path, sorted(refused))
        assert refused[(method, path)]["status"] == 403
        assert "foreign Origin" in refused[(method, path)]["reason"]
    # DELETE needs a CORS preflight, which the gateway never grants: the DELETE itself is never sent.
    assert not any(r["method"] == "DELETE" and r.get("decision") == "allow" for r in records)
    assert any(r["method"] == "OPTIONS" and r.get("decision") == "deny" for r in records)
    assert not any(r.get("decision") == "allow" and r["method"] != "GET" for r in records)


def test_session_cookie_with_a_foreign_or_missing_origin_changes_nothing(
    cluster: Cluster, world: World, browser: Any
) -> None:
    """Even if a browser did send the cookie cross-site (SameSite bypass), Origin/Sec-Fetch-Site refuse."""
    page = _page(browser)
    sign_in(page, cluster.url, world.link(world.admin))
    value = next(c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
    cookie = {"Cookie": f"{SESSION_COOKIE}={value}"}
    for headers in (
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.127.0.0.1"},
        {},
    ):
        for method, path in (
            ("POST", f"/api/jobs/{world.job1}/stop"),
            ("DELETE", f"/api/jobs/{world.job1}"),
            ("POST", "/ui/signout"),
        ):
            resp = requests.request(
                method, cluster.url + path, headers={**cookie, **headers}, verify=cluster.ca, timeout=30
            )
            assert resp.status_code == 403, (method, path, headers, resp.text)
    # A cross-site read with the cookie is refused too.
    resp = requests.get(
        f"{cluster.url}/dashboard/api/jobs/",
        headers={**cookie, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
        verify=cluster.ca,
        timeout=30,
    )
    assert resp.status_code == 403
    assert world.ray_job(world.job1)["status"] in ("PENDING", "RUNNING")  # type: ignore[index]
    # The session survived the forged sign-out attempts (no CSRF token, foreign origin).
    assert (
        requests.get(f"{cluster.url}/dashboard/api/jobs/", headers=cookie, verify=cluster.ca, timeout=30).status_code
        == 200
    )


def test_a_foreign_host_header_is_refused(cluster: Cluster) -> None:
    start = len(cluster.audit_records())
    port = cluster.url.rsplit(":", 1)[1]
    for host in (f"rebind.attacker.example:{port}", "127.0.0.1:1", f"localhost.attacker.example:{port}"):
        resp = requests.get(
            f"{cluster.url}/dashboard/", headers={"Host": host}, cert=cluster.admin_cert, verify=cluster.ca, timeout=30
        )
        assert resp.status_code == 421, host
        assert "host name" in resp.json()["error"]
    ok = requests.get(
        f"{cluster.url}/dashboard/",
        headers={"Host": f"localhost:{port}"},
        cert=cluster.admin_cert,
        verify=cluster.ca,
        timeout=30,
    )
    assert ok.status_code == 200 and "Ray Dashboard" in ok.text
    records = [r for r in _records_since(cluster, start) if r.get("status") == 421]
    # Each refused request: one decision record (deny, with the reason) and one outcome record.
    decisions = [r for r in records if r["kind"] == "request"]
    assert len(decisions) == 3 and all("DNS rebinding" in r["reason"] and r["decision"] == "deny" for r in decisions)
    assert sorted(r["request_id"] for r in records if r["kind"] == "outcome") == sorted(
        r["request_id"] for r in decisions
    )


def _node_id(cluster: Cluster) -> str:
    resp = requests.get(
        f"{cluster.dashboard_url()}/nodes?view=summary",
        headers={"Authorization": f"Bearer {cluster.ray_token()}"},
        timeout=30,
    )
    return str(resp.json()["data"]["summary"][0]["raylet"]["nodeId"])


def _ray_python_pid(cluster: Cluster) -> int:
    """A Python process of Ray's (its dashboard agent): py-spy runs as Ray's user and may attach to those only."""
    run = runstate.read_run_state(cluster.state)
    assert run is not None
    for pid in cluster_pids(cluster.state, run.ray_pid):
        if cmdline(pid).startswith("ray::DashboardAgent"):
            return pid
    raise AssertionError("no dashboard agent among Ray's processes")


def test_profiling_is_for_admins_only(cluster: Cluster, world: World, browser: Any) -> None:
    url, node = cluster.url, _node_id(cluster)
    target = f"{url}/dashboard/worker/traceback?pid={_ray_python_pid(cluster)}&node_id={node}&native=0"
    viewer = _page(browser)
    sign_in(viewer, url, world.link(world.viewer))
    viewer.goto(f"{url}/dashboard/")
    enabled = _fetch(viewer, "api/profiling_enabled")
    assert '"profilingEnabled": false' in enabled["text"]
    response = viewer.goto(target)
    assert response is not None and response.status == 403
    shot(viewer, "profiling-viewer-refused")

    admin = _page(browser)
    sign_in(admin, url, world.link(world.admin))
    admin.goto(f"{url}/dashboard/")
    assert '"profilingEnabled": true' in _fetch(admin, "api/profiling_enabled")["text"]
    response = admin.goto(target, timeout=60_000)
    assert response is not None and response.status == 200, response.text() if response else None
    assert response.headers["content-security-policy"].startswith("sandbox")
    assert "Thread" in admin.inner_text("body") or "Process" in admin.inner_text("body")
    shot(admin, "profiling-admin-traceback")
    if os.geteuid() == 0:
        # Ray's profiler runs as Ray's user: it cannot attach to the control plane's processes (this one is root).
        control = admin.goto(target.replace(f"pid={_ray_python_pid(cluster)}", f"pid={os.getpid()}"), timeout=60_000)
        assert control is not None and control.status != 200


def test_admin_pages_and_accessible_markup(cluster: Cluster, world: World, browser: Any) -> None:
    url = cluster.url
    # `raywarden ui` itself, with the admin's profile.
    printed = run_cli(cluster, "ui", "--json", check=True)
    link = json.loads(printed.stdout)
    assert link["url"].startswith(f"{url}/ui/signin?code=") and link["identity"].endswith("/user/admin")
    admin = _page(browser)
    sign_in(admin, url, link["url"][len(url) :])
    admin.goto(f"{url}/ui/admin/principals")
    assert world.names["viewer"] in admin.inner_text("main")
    shot(admin, "console-principals")
    admin.goto(f"{url}/ui/admin/audit")
    admin.get_by_label("Decision").select_option("deny")
    admin.get_by_label("Rows").fill("50")
    admin.get_by_role("button", name="Filter").click()
    admin.wait_for_url("**/ui/admin/audit?**decision=deny**")
    cells = admin.locator("tbody tr td:nth-child(6)").all_inner_texts()
    assert cells and set(cells) == {"deny"}
    shot(admin, "console-audit")
    # Keyboard: the first Tab reaches the skip link, which moves focus to the main content.
    admin.keyboard.press("Tab")
    assert admin.evaluate("document.activeElement.textContent") == "Skip to content"
    assert admin.locator("h1").count() == 1

    developer = _page(browser)
    sign_in(developer, url, world.link(world.dev2))
    response = developer.goto(f"{url}/ui/admin/audit")
    assert response is not None and response.status == 403
    assert "Audit log" not in developer.inner_text("body")
    # CSP on raywarden's own pages forbids every script.
    response = developer.goto(f"{url}/ui/")
    assert response is not None and "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


def test_disabling_a_user_ends_their_session_at_once(cluster: Cluster, world: World, browser: Any) -> None:
    name = f"bgone-{secrets.token_hex(3)}"
    cert = cluster.issue(name, groups=("viewers",))
    page = _page(browser)
    sign_in(page, cluster.url, world.link(cert))
    page.goto(f"{cluster.url}/dashboard/")  # the console's CSP allows no fetch() at all; the dashboard's does
    assert _fetch(page, "/dashboard/api/jobs/")["status"] == 200
    from raywarden.identity.store import IdentityStore

    IdentityStore.open(cluster.state.identity_db).disable_and_revoke(f"spiffe://test.raywarden/user/{name}", "test")
    assert _fetch(page, "/dashboard/api/jobs/")["status"] == 401
    page.goto(f"{cluster.url}/ui/")
    page.wait_for_url(f"{cluster.url}/ui/signin")


def test_only_a_persons_certificate_gets_a_signin_link(cluster: Cluster, world: World, browser: Any) -> None:
    start = len(cluster.audit_records())
    endpoint = f"{cluster.url}/raywarden/v1/signin-link"
    bot = cluster.issue(f"bbot-{secrets.token_hex(3)}", kind="sa", groups=("admins",))
    assert requests.post(endpoint, json={}, cert=bot, verify=cluster.ca, timeout=30).status_code == 403
    token = requests.post(
        f"{cluster.url}/raywarden/v1/token", json={}, cert=world.viewer, verify=cluster.ca, timeout=30
    ).json()["token"]
    by_token = requests.post(
        endpoint, json={}, headers={"Authorization": f"Bearer {token}"}, verify=cluster.ca, timeout=30
    )
    assert by_token.status_code == 403
    page = _page(browser)
    sign_in(page, cluster.url, world.link(world.viewer))
    value = next(c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
    by_session = requests.post(
        endpoint,
        json={},
        headers={"Cookie": f"{SESSION_COOKIE}={value}", "Origin": cluster.url},
        verify=cluster.ca,
        timeout=30,
    )
    assert by_session.status_code == 401  # control routes never accept the session cookie
    denied = [
        r
        for r in cluster.audit_records()[start:]
        if r.get("path") == "/raywarden/v1/signin-link" and r.get("decision") == "deny"
    ]
    assert len(denied) == 2  # the bearer token (policy) and the cookie (no credential for this route)
    # The admin service account passes the policy (admins-all); the handler refuses it, in the outcome record.
    assert any(
        r.get("kind") == "outcome" and r.get("status") == 403 and "requested by sa" in r.get("reason", "")
        for r in cluster.audit_records()[start:]
    )
    issued = [r for r in cluster.audit_records()[start:] if r.get("event") == "signin_link.issue"]
    assert len(issued) == 1 and issued[0]["principal"].endswith(world.names["viewer"])


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is not installed")
def test_metrics_page_shows_live_charts_to_a_viewer_and_nothing_to_a_developer(
    cluster: Cluster, world: World, browser: Any
) -> None:
    url = cluster.url
    viewer = _page(browser)
    sign_in(viewer, url, world.link(world.viewer))
    viewer.goto(f"{url}/dashboard/#/metrics")
    # Each chart is an iframe of the gateway's own panel page, drawn from the cluster's Prometheus.
    frame = viewer.frame_locator("iframe").first
    expect(frame.locator("svg.chart polyline").first).to_be_attached(timeout=90_000)
    viewer.wait_for_timeout(3000)
    shot(viewer, "dashboard-metrics-viewer")
    assert "not detected" not in viewer.inner_text("body")
    viewer.goto(f"{url}/dashboard/#/overview")
    overview = viewer.frame_locator("iframe[title='Cluster Utilization']")
    expect(overview.locator("svg.chart").first).to_be_attached(timeout=60_000)
    shot(viewer, "dashboard-overview-charts")

    # A developer may not see other users' task and actor names: the UI is told metrics are off.
    developer = _page(browser)
    sign_in(developer, url, world.link(world.dev1))
    developer.goto(f"{url}/dashboard/#/overview")
    developer.get_by_text("Node Status").wait_for(timeout=30_000)
    developer.wait_for_load_state("networkidle")
    assert developer.locator("iframe").count() == 0
    # Nor does the events list name another developer's job (Ray files submissions as cluster events).
    expect(developer.locator("body")).to_contain_text(f"Started a ray job {world.job1}", timeout=30_000)
    assert world.job2 not in developer.inner_text("body")
    shot(developer, "dashboard-overview-developer")
    answer = _fetch(developer, "/ui/metrics/d-solo/rayDefaultDashboard/x?panelId=41")
    assert answer["status"] == 403
