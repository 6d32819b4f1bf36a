"""Ray's Metrics page through the gateway, against the cluster's real Prometheus (gateway/metrics)."""

from __future__ import annotations

import secrets
import shutil
import time

import pytest
import requests

from raywarden.cluster import runstate
from tests.support import Cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is not installed"),
]
DEFAULT = "rayDefaultDashboard"
UTILIZATION = (
    f"/ui/metrics/d-solo/{DEFAULT}/default-dashboard?orgId=1&panelId=41&var-datasource=Prometheus"
    "&refresh&from=now-5m&to=now"
)


def _get(cluster: Cluster, cert: tuple[str, str], path: str) -> requests.Response:
    return requests.get(cluster.url + path, cert=cert, verify=cluster.ca, timeout=60)


def test_the_health_check_names_the_gateways_panels_for_those_who_see_every_job(cluster: Cluster) -> None:
    run = runstate.read_run_state(cluster.state)
    assert run is not None and run.prometheus_port is not None
    health = _get(cluster, cluster.admin_cert, "/dashboard/api/grafana_health").json()
    assert health["result"] is True and health["data"]["grafanaHost"] == "/ui/metrics"
    assert health["data"]["sessionName"].startswith("session_")
    tag = secrets.token_hex(3)
    developer = cluster.issue(f"metrics-dev-{tag}", groups=("developers",))
    hidden = _get(cluster, developer, "/dashboard/api/grafana_health").json()
    assert hidden["data"] == {"grafanaHost": "DISABLED"}
    start = len(cluster.audit_records())
    refused = _get(cluster, developer, UTILIZATION)
    assert refused.status_code == 403 and refused.json()["hint"]
    outcome = [r for r in cluster.audit_records()[start:] if r.get("kind") == "outcome"]
    assert outcome and outcome[-1]["status"] == 403 and "every job" in outcome[-1]["reason"]
    viewer = cluster.issue(f"metrics-view-{tag}", groups=("viewers",))
    assert _get(cluster, viewer, UTILIZATION).status_code == 200


def test_panels_show_live_data_and_every_query_runs(cluster: Cluster) -> None:
    deadline = time.monotonic() + 90
    page = ""
    while time.monotonic() < deadline:
        answer = _get(cluster, cluster.admin_cert, UTILIZATION)
        assert answer.status_code == 200, answer.text
        page = answer.text
        if "<polyline" in page:
            break
        time.sleep(3)
    assert "<polyline" in page, "Prometheus had no cluster utilization data after 90 s"
    assert 'http-equiv="refresh"' in page and "Cluster Utilization" in page
    assert answer.headers["x-frame-options"] == "SAMEORIGIN"
    assert "frame-ancestors 'self'" in answer.headers["content-security-policy"]
    # The whole default dashboard: every one of Ray's queries is valid PromQL for the real Prometheus.
    whole = _get(cluster, cluster.admin_cert, f"/ui/metrics/d/{DEFAULT}/?orgId=1&from=now-5m&to=now")
    assert whole.status_code == 200 and "Prometheus refused" not in whole.text and "did not answer" not in whole.text
    assert whole.text.count("<section") > 30 and "Node CPU Usage" in whole.text


def test_bad_panel_requests_are_refused(cluster: Cluster) -> None:
    admin = cluster.admin_cert
    for path, status in (
        (UTILIZATION.replace("panelId=41", "panelId=99999"), 404),
        (UTILIZATION.replace(DEFAULT, "notADashboard"), 404),
        (UTILIZATION + "&var-Instance=%22%7D%20or%20vector(1)", 400),
        (UTILIZATION.replace("from=now-5m", "from=yesterday"), 400),
        (UTILIZATION + "&var-Unknown=1", 400),
    ):
        start = len(cluster.audit_records())
        answer = _get(cluster, admin, path)
        assert answer.status_code == status, (path, answer.text)
        assert answer.json()["error"]
        # Audited: the outcome record carries the status and the reason.
        records = [r for r in cluster.audit_records()[start:] if r.get("request_id") == answer.json()["request_id"]]
        assert any(r.get("status") == status and r.get("reason") for r in records), records
