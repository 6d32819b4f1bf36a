"""Property-based fuzzing of every route in the route table, anonymous and authenticated (issue 13 §4):
random methods, paths from the templates, queries, headers and bodies, sent as raw bytes.

While Ray (here the fake dashboard) is up: no answer is a 5xx, every answer's request id has exactly one
decision record and one outcome record, and no refused request reaches Ray with anything that changes state.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from raywarden.gateway.route_model import Route
from raywarden.gateway.routes import ROUTES
from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
SEGMENTS = {
    "job_id": ("fuzz-job", "01000000", "raysubmit_x", "..", "%2e%2e", "a%00", "x" * 200),
    "protocol": ("gcs", "s3"),
    "package_name": ("_ray_pkg_fuzz.zip", "_ray_pkg_../x.zip"),
    "static_path": ("js/main.js", "js/main.js.map"),
    "node_id": ("0123abcd" * 7, "zz"),
    "actor_id": ("0123abcd" * 4, "x"),
    "app_name": ("app",),
    "deployment_name": ("dep",),
    "dashboard_uid": ("rayDefaultDashboard", "nope"),
    "dashboard_slug": ("default", ""),
}
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
raw_piece = st.one_of(
    text.map(lambda t: quote(t, safe="")),
    st.sampled_from(["%", "%zz", "%ff", "#", "+", "&", "=", "%00", "a b", "%0a", "\xff"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed requests (so that deep paths are reached), with junk mixed in at every part."""
    route: Route = draw(st.sampled_from(ROUTES))
    path = route.template
    for name, choices in SEGMENTS.items():
        if "{" + name + "}" in path:
            value = draw(st.one_of(st.just(choices[0]), st.sampled_from(choices)))
            path = path.replace("{" + name + "}", value)
    names = [*route.query, "job_id", "unknown", "limit"]
    value = st.from_regex(r"[a-z0-9_]{0,8}", fullmatch=True)
    good = (
        st.lists(st.tuples(st.sampled_from(list(route.query)), value), max_size=3, unique_by=lambda p: p[0])
        if route.query
        else st.just([])
    )
    junk = st.lists(st.tuples(st.sampled_from(names), raw_piece), max_size=6)
    pairs = draw(st.one_of(st.just([]), good, good, junk))
    query = "&".join(f"{n}={v}" for n, v in pairs)
    job = st.fixed_dictionaries(
        {"entrypoint": st.sampled_from(["sleep 1", "python x.py"])},
        optional={
            "submission_id": st.one_of(st.from_regex(r"run-[a-z0-9]{1,6}", fullmatch=True), text),
            "entrypoint_num_cpus": st.one_of(st.integers(0, 4), json_values),
            "runtime_env": st.one_of(st.just({"env_vars": {"A": "1"}}), json_values),
        },
    ).map(lambda v: json.dumps(v).encode())
    junk_body = st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64), st.just(b"[" * 5000 + b"]" * 5000)
    )
    fitting = {"none": st.just(b""), "job_submit": job, "json": st.just(b"{}")}.get(route.body, st.just(b""))
    return {
        "method": draw(st.sampled_from((route.method,) * 12 + METHODS)),
        "path": path.encode("utf-8", "surrogateescape"),
        "query": query.encode("utf-8", "surrogateescape"),
        "who": draw(st.sampled_from(("admin",) * 3 + ("developer",) * 2 + ("viewer", "anonymous", "forged"))),
        "body": draw(st.one_of(fitting, fitting, junk_body)),
        "origin": draw(st.sampled_from((None,) * 5 + ("https://evil.example",))),
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_every_route_answers_without_5xx_and_records_both(gateway: Gateway, request: dict[str, Any]) -> None:
    headers = {
        "anonymous": {},
        "admin": gateway.bearer("admin"),
        "developer": gateway.bearer("dora", "developers"),
        "viewer": gateway.bearer("vic", "viewers"),
        "forged": {"authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},
    }[request["who"]]
    if request["body"]:
        headers = {**headers, "content-type": "application/json"}
    if request["origin"]:
        headers = {**headers, "origin": request["origin"]}
    before, jobs_before = len(gateway.ray.received), len(gateway.ray.jobs)
    resp = gateway.raw(request["method"], request["path"], request["query"], headers, request["body"])
    event(f"status {resp.status}")
    assert resp.status < 500, (request, resp.status, resp.body[:300])
    rid = resp.headers["x-request-id"]
    records = gateway.records_of(rid)
    assert [r["kind"] for r in records] == ["request", "outcome"], (request, records)
    assert records[1]["status"] == resp.status
    if resp.status >= 400:
        changed = [r for r in gateway.ray.received[before:] if r.method in CHANGING]
        assert changed == [] and len(gateway.ray.jobs) == jobs_before, (request, resp.status)
