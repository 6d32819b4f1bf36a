"""The dashboard's page and scripts come from the installed Ray package, never from the upstream: a fake
dashboard on Ray's port (any job can start one) puts no script in the gateway's origin."""

from __future__ import annotations

import pytest

from raywarden.gateway.dashboard_assets import build_dir
from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit


def _installed(relative: str) -> bytes:
    build = build_dir()
    assert build is not None
    return (build / relative).read_bytes()


def test_the_page_and_its_assets_are_the_installed_packages(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    build = build_dir()
    assert build is not None
    script = next(p for p in (build / "static" / "js").iterdir() if p.suffix == ".js")
    for path, relative in (
        ("/dashboard/", "index.html"),
        ("/dashboard/?theme=x", "index.html"),
        ("/dashboard/favicon.ico", "favicon.ico"),
        (f"/dashboard/static/js/{script.name}", f"static/js/{script.name}"),
    ):
        resp = gateway.client.get(path, headers=admin)
        assert resp.status_code == 200, (path, resp.text[:200])
        assert resp.content == _installed(relative), path
    page = gateway.client.get("/dashboard/", headers=admin)
    assert page.headers["content-type"].startswith("text/html") and page.headers["cache-control"] == "no-store"
    assert (
        gateway.client.get(f"/dashboard/static/js/{script.name}", headers=admin)
        .headers["content-type"]
        .startswith("text/javascript")
    )
    # Ray was never asked for any of them: whatever listens on its port cannot answer them.
    assert not [r for r in gateway.ray.requests() if r.path in ("/", "/favicon.ico") or r.path.startswith("/static/")]


def test_a_missing_asset_is_a_404_and_still_needs_the_right(gateway: Gateway) -> None:
    resp = gateway.client.get("/dashboard/static/js/main.pwn.js", headers=gateway.bearer("admin"))
    assert resp.status_code == 404 and b"pwn" not in resp.content
    assert gateway.client.get("/dashboard/", headers={}).status_code == 401
