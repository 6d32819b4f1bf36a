"""Ray Serve on the head, as `up --serve-listen` starts it (docs/serve.md).

Serve fixes its listener when it first starts, so `up` starts it itself, through Ray's REST API, before any
job or deploy can: its HTTP proxy on the head's loopback only (``HeadOnly``; a proxy on a worker node could not
be reached by the gateway, and the controller gives every proxy the same host), no gRPC proxy, no
application. Every deploy through the gateway writes the same settings again (gateway/serve/control.py), and
the gateway refuses calls (503) while Ray reports anything else (gateway/serve/table.py).
"""

from __future__ import annotations

import importlib.util
import json
import time

import requests

from raywarden.errors import ClusterError
from raywarden.files import read_private
from raywarden.state import StateDir

HOST = "127.0.0.1"
APPS_PATH = "/api/serve/applications/"
START_TIMEOUT_S = 180.0  # Serve's controller and proxy start in 3-20 s; a loaded host takes longer
# Serve's defaults today, pinned so that a future Ray that changes one fails closed: no HAProxy or direct
# ingress (both bind every interface), and proxy-to-replica calls stay on Ray's mutual-TLS actor calls.
SERVE_ENVIRONMENT = {
    "RAY_SERVE_DEFAULT_HTTP_HOST": HOST,
    "RAY_SERVE_ENABLE_HA_PROXY": "0",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
    "RAY_SERVE_PROXY_USE_GRPC": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",
}


def serve_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def pinned_settings(port: int) -> dict[str, object]:
    """The settings raywarden starts Serve with, and writes into every deploy."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": HOST, "port": port},
        "grpc_options": {"grpc_servicer_functions": []},
    }


def require_installed() -> None:
    """`up --serve-listen` refuses to start without Ray Serve (Ray's REST API would answer 501)."""
    for module in ("ray.serve", "fastapi", "starlette"):
        if importlib.util.find_spec(module) is None:
            raise ClusterError(
                f"Ray Serve is not installed ({module} does not import)",
                hint="pip install 'ray[serve]' in raywarden's environment, or run `up` without --serve-listen",
            )


def start(state: StateDir, dashboard_url: str, port: int, timeout_s: float = START_TIMEOUT_S) -> None:
    """Start Serve with the pinned settings and no application; return once its proxy answers."""
    token = read_private(state.ray_token).decode().strip()
    body = {**pinned_settings(port), "applications": []}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = requests.put(
                dashboard_url + APPS_PATH,
                data=json.dumps(body),
                headers=headers,
                timeout=(5.0, max(5.0, deadline - time.monotonic())),
            )
        except requests.Timeout:
            # Ray is still starting Serve: a second PUT would race the first; wait for the proxy instead.
            last = "Ray's dashboard did not answer the start request in time"
            break
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"[:400]
            time.sleep(1.0)
            continue
        if resp.status_code == 200:
            last = "its proxy did not answer"
            break
        last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        if resp.status_code in (400, 501):  # a refused config or no Serve in Ray: retrying will not help
            raise ClusterError(f"Ray Serve did not start: {last}", hint="pip install 'ray[serve]'")
        time.sleep(1.0)
    if not _proxy_answers(port, deadline):
        raise ClusterError(f"Ray Serve did not start: {last}", hint=f"see Ray's logs under {state.runtime_dir}")


def proxy_answers(port: int) -> bool:
    """Serve's proxy answers on its loopback port (200, or 503 before its first application)."""
    try:
        return requests.get(serve_url(port) + "/-/healthz", timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False


def _proxy_answers(port: int, deadline: float) -> bool:
    # Until its first application, the proxy answers 503 "Route table is not populated yet": it is up.
    while time.monotonic() < deadline:
        try:
            if requests.get(serve_url(port) + "/-/healthz", timeout=2).status_code in (200, 503):
                return True
        except requests.RequestException:
            pass
        time.sleep(0.25)
    return False
