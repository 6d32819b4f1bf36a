"""One reading of the query (issue 13 §2): parsed once with a strict grammar, anything with two readings
refused, and Ray given the query re-serialised from the pairs that were checked, never the raw string."""

from __future__ import annotations

import pytest

from raywarden.gateway.request import BadQuery, check_pairs, encode_pairs, parse_pairs
from raywarden.gateway.routes import ROUTES
from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit


def _jobs(gateway: Gateway) -> tuple[str, str, dict[str, str]]:
    alice = gateway.ray.add_job("a1", gateway.principal("alice", "developers"))
    bob = gateway.ray.add_job("b1", gateway.principal("bob", "developers"))
    return alice["job_id"], bob["job_id"], gateway.bearer("bob")


def test_a_repeated_job_id_is_refused_not_read_twice(gateway: Gateway) -> None:
    """The review's request: the gateway checked the last job_id, Ray read the first (alice's timeline)."""
    alice, bob, headers = _jobs(gateway)
    for query in (
        f"job_id={alice}&job_id={bob}",
        f"job_id={bob}&job_id={alice}",
        f"job_id={bob}&download=1&job_id={bob}",
    ):
        resp = gateway.raw("GET", b"/dashboard/api/v0/tasks/timeline", query.encode(), headers)
        assert resp.status == 400 and resp.json()["error"] == "parameter job_id given more than once", query
        assert resp.json()["hint"]
        record = gateway.audited(resp.json()["request_id"], "deny", 400)
        assert record["raw_query"] == query  # what was refused, as sent
    assert gateway.ray.requests(path="/api/v0/tasks/timeline") == []


def test_a_literal_hash_is_refused(gateway: Gateway) -> None:
    """The review's request: Ray's client dropped everything after '#', which the gateway's check still saw."""
    alice, bob, headers = _jobs(gateway)
    for query in (
        f"timeout=30#&filter_keys=job_id&filter_predicates=%3D&filter_values={bob}",
        f"filter_keys=job_id&filter_predicates=%3D&filter_values={bob}#{alice}",
        "#",
    ):
        resp = gateway.raw("GET", b"/dashboard/api/v0/tasks/summarize", query.encode(), headers)
        assert resp.status == 400 and "'#'" in resp.json()["error"], query
        gateway.audited(resp.json()["request_id"], "deny", 400)
    assert gateway.ray.requests(path="/api/v0/tasks/summarize") == []


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (b"job_id=%zz", "bad percent-encoding in the query"),
        (b"job_id=%4", "bad percent-encoding in the query"),
        (b"job_id=%ff%fe", "query does not decode to UTF-8"),
        (b"job_id=\xff", "query has a space, a control character or a non-ASCII byte"),
        (b"job_id=a b", "query has a space, a control character or a non-ASCII byte"),
        (b"job_id=%0a", "control character in the query"),
        (b"job_id=%00", "control character in the query"),
        (b"job_id=x&job%5fid=y", "parameter job_id given more than once"),
        (b"JOB_ID=x", "query parameter not allowed: JOB_ID"),
    ],
)
def test_ambiguous_encodings_are_refused(gateway: Gateway, query: bytes, error: str) -> None:
    resp = gateway.raw("GET", b"/dashboard/events", query, gateway.bearer("admin"))
    assert resp.status == 400 and resp.json()["error"] == error, resp.body
    gateway.audited(resp.json()["request_id"], "deny", 400)
    assert gateway.ray.requests(path="/events") == []


def test_ray_receives_the_query_re_serialised_from_what_was_checked(gateway: Gateway) -> None:
    job = gateway.ray.add_job("a1", gateway.principal("alice", "developers"))
    headers = gateway.bearer("alice")
    sent = (
        f"detail=1&&limit=10&filter_keys=job_id&filter_predicates=%3d&filter_values={job['job_id']}"
        "&filter_keys=name&filter_predicates==&filter_values=a+b%2Bc"
    )
    resp = gateway.raw("GET", b"/dashboard/api/v0/tasks", sent.encode(), headers)
    assert resp.status == 200, resp.body
    (seen,) = gateway.ray.requests(path="/api/v0/tasks")
    assert seen.raw_query == (
        f"detail=1&limit=10&filter_keys=job_id&filter_predicates=%3D&filter_values={job['job_id']}"
        "&filter_keys=name&filter_predicates=%3D&filter_values=a%20b%2Bc"
    )
    # The decision record carries the same canonical query: what the log shows is what Ray received.
    record = gateway.audited(resp.json().get("request_id") or resp.headers["x-request-id"], "allow", 200)
    assert record["query"] == seen.raw_query


def test_secret_query_values_stay_out_of_the_log(gateway: Gateway) -> None:
    resp = gateway.client.get("/ui/signin?code=abc.s3cr3t")
    assert resp.status_code == 200
    record = gateway.audited(resp.headers["x-request-id"], "allow", 200)
    assert record["query"] == "code=[REDACTED]"
    refused = gateway.raw("GET", b"/ui/signin", b"code=abc.s3cr3t&code=x", {})
    assert refused.status == 400
    assert "s3cr3t" not in str(gateway.records_of(refused.headers["x-request-id"]))


@pytest.mark.parametrize(
    "path", [b"/dashboard/api/v0/logs/file", b"/ui/signin", b"/ui/oidc/start", b"/dashboard/api/v0/tasks"]
)
def test_too_many_parameters_is_a_400_not_a_500(gateway: Gateway, path: bytes) -> None:
    """The review: more than 16 parameters (parse_qs's limit) gave a 500 on these routes, unaudited."""
    headers = gateway.bearer("admin")
    for query in (b"&".join([b"timeout=1"] * 17), b"&".join(b"p%d=1" % i for i in range(17)), b"a=1&" * 70):
        resp = gateway.raw("GET", path, query, headers)
        assert resp.status == 400 and resp.json()["hint"], (path, query[:30], resp.body)
        gateway.audited(resp.json()["request_id"], "deny", 400)


def test_the_grammar_round_trips() -> None:
    pairs = parse_pairs(b"a=1&b=x+y&c=%2B&d&e=&f=%C3%A9%2F%26%3D%23")
    assert pairs == (("a", "1"), ("b", "x y"), ("c", "+"), ("d", ""), ("e", ""), ("f", "é/&=#"))
    assert parse_pairs(encode_pairs(pairs).encode()) == pairs
    with pytest.raises(BadQuery, match="more than once"):
        check_pairs((("x", "1"), ("x", "2")), {"x": "one"})
    check_pairs((("x", "1"), ("x", "2")), {"x": "list"})


def test_only_the_state_api_filters_may_repeat() -> None:
    lists = {name for route in ROUTES for name, kind in route.query.items() if kind == "list"}
    assert lists == {"filter_keys", "filter_predicates", "filter_values"}
