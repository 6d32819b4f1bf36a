"""Path canonicalisation: no encoding trick reaches a route other than the one matched."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raywarden.gateway.request import BadPath, canonical_path, encode_path
from raywarden.gateway.routes import ROUTES, match

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/api/jobs/", "/api/jobs/"),
        (b"/api//jobs//", "/api/jobs/"),
        (b"/api/jobs/./", "/api/jobs/"),
        (b"/static/../../etc/passwd", "/etc/passwd"),
        (b"/static/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"),
        (b"/static/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/etc/passwd"),
        (b"/api/version/../jobs/", "/api/jobs/"),
        (b"/api/jobs/raysubmit_1/..", "/api/jobs/"),
        (b"/..", "/"),
    ],
)
def test_canonical_path_resolves_dots_and_encoded_slashes(raw: bytes, expected: str) -> None:
    assert canonical_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"/static/%252e%252e/etc/passwd",  # double encoding
        b"/static/..%5c..%5cetc%5cpasswd",  # encoded backslash
        b"/static\\..\\etc",
        b"/api/jobs/%00",
        b"/api/jobs/%",
        b"/api/jobs/%zz",
        b"/api/jobs/\xff",
        b"api/jobs/",
        b"/a b",
        b"/" + b"a" * 3000,
    ],
)
def test_ambiguous_paths_are_refused(raw: bytes) -> None:
    with pytest.raises(BadPath):
        canonical_path(raw)


def test_exploit_paths_match_no_route() -> None:
    for raw in (
        b"/log_proxy",
        b"/worker/cpu_profile",
        b"/api/v0/logs/file",
        b"/api/job_agent/jobs/",
        b"/static/../../../../etc/passwd",
        b"/api/jobs/x/../../v0/logs/file",
    ):
        for method in ("GET", "POST"):
            assert match(method, canonical_path(raw)) is None, raw


def test_every_route_matches_its_own_example() -> None:
    examples = {
        "job_id": "raysubmit_abc123",
        "protocol": "gcs",
        "package_name": "_ray_pkg_0123abcd.zip",
        "static_path": "js/main.84605326.js",
        "node_id": "0123abcd" * 7,
        "actor_id": "0123abcd" * 4,
        "app_name": "app1",
        "deployment_name": "dep1",
        "dashboard_uid": "rayDefaultDashboard",
        "dashboard_slug": "default-dashboard",
    }
    for route in ROUTES:
        path = route.template.format(**examples)
        found = match(route.method, path, websocket=route.websocket)
        assert found is not None and found.route is route


@given(st.binary(min_size=1, max_size=200))
def test_canonical_paths_are_fixed_points(raw: bytes) -> None:
    """Whatever the input, the canonical form re-encodes to itself: matching and forwarding agree."""
    try:
        path = canonical_path(b"/" + raw)
    except BadPath:
        return
    assert canonical_path(encode_path(path).encode()) == path
    assert "/../" not in path and "//" not in path
