"""Dashboard answers reduced per job and redacted: the same decisions as the Jobs API (gateway/jobaccess.py),
each route's filter and job scope as the route table names them."""

from __future__ import annotations

import json

import pytest

from raywarden.gateway.answers import filter_dashboard
from raywarden.gateway.authz import Viewer
from raywarden.gateway.handlers.dashboard import driver_log_job
from raywarden.gateway.jobaccess import (
    REDACTED,
    JobAccess,
    job_access,
    redact_runtime_envs,
    scope_refusal,
)
from raywarden.gateway.request import BadQuery, Target, check_pairs, parse_pairs
from raywarden.gateway.responses import Refusal
from raywarden.gateway.route_model import Route
from raywarden.gateway.routes import DASHBOARD_ROUTES
from raywarden.policy.entities import request_context
from tests.unit.policy.policy_support import engine, principal, spiffe

pytestmark = pytest.mark.unit
ENGINE = engine()
CONTEXT = request_context("session", "127.0.0.1", 10)
SECRET = "hunter2"
RAY_JOBS = json.dumps(
    [
        {
            "submission_id": "s-alice",
            "job_id": "01000000",
            "status": "RUNNING",
            "entrypoint": "x",
            "type": "SUBMISSION",
            "metadata": {"raywarden.owner": spiffe("alice")},
            "runtime_env": {"env_vars": {"K": SECRET}},
        },
        {
            "submission_id": "s-bob",
            "job_id": "02000000",
            "status": "RUNNING",
            "entrypoint": "x",
            "type": "SUBMISSION",
            "metadata": {"raywarden.owner": spiffe("bob")},
        },
    ]
).encode()


def _viewer(*groups: str, name: str = "alice") -> Viewer:
    return Viewer(ENGINE, principal(name, *groups), CONTEXT)


def _access(viewer: Viewer, jobs: bytes = RAY_JOBS) -> JobAccess:
    return job_access(viewer, json.loads(jobs))


def _route(template: str) -> Route:
    return next(r for r in DASHBOARD_ROUTES if r.ray_template == template)


def _target(template: str, query: str) -> Target:
    pairs = parse_pairs(query.encode())
    check_pairs(pairs, _route(template).query)
    return Target(_route(template).template, pairs)


def _filter(
    template: str,
    viewer: Viewer,
    body: bytes,
    access: JobAccess | None,
    query: str = "",
    params: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, int]]:
    name = _route(template).filter
    assert name is not None, template
    return filter_dashboard(name, viewer, body, access, _target(template, query), params or {})


def _scope(template: str, params: dict[str, str], query: str, access: JobAccess) -> Refusal | None:
    return scope_refusal(_route(template).scope, _target(template, query), params, access)


def _tasks() -> bytes:
    env = json.dumps({"env_vars": {"K": SECRET}, "pip": ["x"]})
    tasks = [
        {"task_id": "t1", "job_id": "01000000", "runtime_env_info": {"serialized_runtime_env": env}},
        {"task_id": "t2", "job_id": "02000000", "runtime_env_info": {"serialized_runtime_env": env}},
        {"task_id": "t3", "job_id": "03000000"},
    ]
    return json.dumps(
        {
            "result": True,
            "msg": "",
            "data": {"result": {"total": 3, "num_after_truncation": 3, "num_filtered": 3, "result": tasks}},
        }
    ).encode()


def test_a_developer_sees_only_tasks_of_own_jobs_with_values() -> None:
    viewer = _viewer("developers")
    body, shown = _filter("/api/v0/tasks", viewer, _tasks(), _access(viewer))
    data = json.loads(body)["data"]["result"]
    assert [t["task_id"] for t in data["result"]] == ["t1"] and data["total"] == 1
    assert shown == {"shown": 1, "hidden": 2}
    assert SECRET in body.decode()  # the owner holds jobs.read_env


def test_a_viewer_sees_every_task_without_values() -> None:
    viewer = _viewer("viewers", name="vera")
    body, shown = _filter("/api/v0/tasks", viewer, _tasks(), _access(viewer))
    assert shown["shown"] == 3 and SECRET not in body.decode()
    inner = json.loads(json.loads(body)["data"]["result"]["result"][0]["runtime_env_info"]["serialized_runtime_env"])
    assert inner == {"env_vars": {"K": REDACTED}, "pip": ["x"]}


def test_actor_table_and_runtime_envs() -> None:
    actors = {
        "result": True,
        "data": {
            "actors": {
                "a1": {"jobId": "01000000", "runtimeEnv": {"env_vars": {"K": SECRET}}},
                "a2": {"jobId": "02000000"},
            }
        },
    }
    viewer = _viewer("developers", name="bob")
    body, shown = _filter("/logical/actors", viewer, json.dumps(actors).encode(), _access(viewer))
    assert list(json.loads(body)["data"]["actors"]) == ["a2"] and shown == {"shown": 1, "hidden": 1}
    envs = {"data": {"result": {"result": [{"runtime_env": {"env_vars": {"K": SECRET}}}]}}}
    admin_body, _ = _filter("/api/v0/runtime_envs", _viewer("admins"), json.dumps(envs).encode(), None)
    assert SECRET not in admin_body.decode()  # not tied to a job: redacted for everyone


def test_profiling_flag_follows_the_policy() -> None:
    answer = json.dumps({"result": True, "data": {"profilingEnabled": True, "profilingDefaults": {}}}).encode()
    viewer_body, _ = _filter("/api/profiling_enabled", _viewer("viewers"), answer, None)
    admin_body, _ = _filter("/api/profiling_enabled", _viewer("admins"), answer, None)
    assert json.loads(viewer_body)["data"]["profilingEnabled"] is False
    assert json.loads(admin_body)["data"]["profilingEnabled"] is True


def test_redaction_reaches_nested_and_unreadable_envs() -> None:
    value = {
        "a": [{"runtime_env": {"env_vars": {"X": "1"}, "conda": {"variables": {"Y": "2"}}}}],
        "serialized_runtime_env": "{not json",
    }
    out = redact_runtime_envs(value)
    assert out["a"][0]["runtime_env"]["env_vars"] == {"X": REDACTED}
    assert out["a"][0]["runtime_env"]["conda"]["variables"] == {"Y": REDACTED}
    assert out["serialized_runtime_env"] == REDACTED


def test_driver_log_requests_name_exactly_one_job() -> None:
    logs = "/api/v0/logs/file"
    target = _target(logs, "node_id=ab&filename=job-driver-raysubmit_1.log&lines=50000&filter_ansi_code=true")
    assert driver_log_job(target) == "raysubmit_1"
    for query in (
        "filename=job-driver-x.log&actor_id=a",
        "filename=../job-driver-x.log",
        "filename=worker-1.out",
        "filename=job-driver-a/b.log",
        "",
    ):
        assert driver_log_job(_target(logs, query)) is None, query
    # Two file names: the gateway would read one and Ray another, so the route refuses the repeat outright.
    with pytest.raises(BadQuery, match="more than once"):
        _target(logs, "filename=job-driver-x.log&filename=job-driver-y.log")


def _answer(**data: object) -> bytes:
    return json.dumps({"result": True, "msg": "", "data": data}).encode()


def test_events_keep_cluster_events_and_the_callers_jobs() -> None:
    events = {
        "global": [
            {"message": "node added"},
            {"message": "Started a ray job s-alice.", "customFields": {"submissionId": "s-alice"}},
            {"message": "Started a ray job s-bob.", "customFields": {"submission_id": "s-bob"}},
        ],
        "01000000": [{"message": "alice's job"}],
        "02000000": [{"message": "bob's job"}],
        "03000000": [{"message": "a job no one owns"}],
    }
    viewer = _viewer("developers", name="bob")
    body, shown = _filter("/events", viewer, _answer(events=events), _access(viewer))
    shown_events = json.loads(body)["data"]["events"]
    assert set(shown_events) == {"global", "02000000"}
    assert [e["message"] for e in shown_events["global"]] == ["node added", "Started a ray job s-bob."]
    assert shown == {"shown": 2, "hidden": 3}
    cluster_only, _ = _filter(
        "/events",
        viewer,
        _answer(job_id="global", events=events["global"]),
        _access(viewer),
        "job_id=global",
    )
    assert "s-alice" not in cluster_only.decode() and "s-bob" in cluster_only.decode()
    admin = _viewer("admins", name="ada")
    body, _ = _filter("/events", admin, _answer(events=events), _access(admin))
    assert set(json.loads(body)["data"]["events"]) == set(events)


def test_actor_details_of_another_users_job_read_like_an_unknown_actor() -> None:
    answer = _answer(detail={"actorId": "a1", "jobId": "01000000", "runtimeEnv": {"env_vars": {"K": SECRET}}})
    bob = _viewer("developers", name="bob")
    body, shown = _filter("/logical/actors/{actor_id}", bob, answer, _access(bob))
    assert json.loads(body)["data"]["detail"] is None and shown == {"shown": 0, "hidden": 1}
    vera = _viewer("viewers", name="vera")
    body, _ = _filter("/logical/actors/{actor_id}", vera, answer, _access(vera))
    assert json.loads(body)["data"]["detail"]["actorId"] == "a1" and SECRET not in body.decode()


def test_node_pages_show_only_workers_and_actors_of_viewable_jobs() -> None:
    workers = [
        {"pid": 1, "jobId": "01000000", "cmdline": ["ray::alice_task"]},
        {"pid": 2, "jobId": "02000000", "cmdline": ["ray::bob_task"]},
    ]
    stats = [
        {"pid": 1, "jobId": "01000000", "currentTaskName": "alice_task"},
        {"pid": 2, "jobId": "02000000", "currentTaskName": "bob_task"},
    ]
    detail = {
        "hostname": "h",
        "workers": workers,
        "actors": {"a1": {"jobId": "01000000"}, "a2": {"jobId": "02000000"}},
        "raylet": {"nodeId": "n", "coreWorkersStats": stats},
    }
    alice = _viewer("developers")
    access = _access(alice)
    body, shown = _filter("/nodes/{node_id}", alice, _answer(detail=detail), access)
    text = body.decode()
    assert "bob_task" not in text and "a2" not in json.loads(body)["data"]["detail"]["actors"]
    assert "alice_task" in text and shown == {"shown": 3, "hidden": 3}
    summary = [{"hostname": "h", "raylet": {"nodeId": "n", "coreWorkersStats": stats}}]
    body, _ = _filter("/nodes", alice, _answer(summary=summary, node_logical_resources={}), access)
    assert "bob_task" not in body.decode() and "alice_task" in body.decode()
    hosts = _answer(host_name_list=["h"])
    assert json.loads(_filter("/nodes", alice, hosts, access)[0]) == json.loads(hosts)


@pytest.mark.parametrize(
    ("template", "params", "query"),
    [
        ("/api/v0/tasks/summarize", {}, "filter_keys=job_id&filter_predicates=%3D&filter_values=01000000"),
        ("/api/v0/tasks/timeline", {}, "download=1&job_id=01000000"),
        ("/api/data/datasets/{job_id}", {"job_id": "01000000"}, ""),
        ("/api/data/datasets/{job_id}", {"job_id": "s-alice"}, ""),
        ("/events", {}, "job_id=01000000"),
    ],
)
def test_answers_about_one_job_need_that_job(template: str, params: dict[str, str], query: str) -> None:
    alice, bob = _viewer("developers"), _viewer("developers", name="bob")
    assert _scope(template, params, query, _access(alice)) is None
    refusal = _scope(template, params, query, _access(bob))
    assert refusal is not None and (refusal.status, refusal.message) == (404, "no such job")
    # A job Ray does not know gets the very same answer: no existence oracle.
    missing = _scope(template, {k: "0f000000" for k in params}, query.replace("01000000", "0f000000"), _access(bob))
    assert missing is not None and (missing.status, missing.message) == (404, "no such job")


@pytest.mark.parametrize(
    "query",
    [
        "",
        "filter_keys=job_id&filter_predicates=%21%3D&filter_values=02000000",
        "filter_keys=state&filter_predicates=%3D&filter_values=RUNNING",
        "filter_keys=job_id&filter_keys=x&filter_predicates=%3D&filter_values=02000000",
    ],
)
def test_summaries_of_every_job_need_every_job(query: str) -> None:
    bob = _viewer("developers", name="bob")
    refusal = _scope("/api/v0/tasks/summarize", {}, query, _access(bob))
    assert refusal is not None and refusal.status == 403 and refusal.hint
    for group, name in (("viewers", "vera"), ("admins", "ada")):
        viewer = _viewer(group, name=name)
        assert _scope("/api/v0/tasks/summarize", {}, query, _access(viewer)) is None
    assert _scope("/api/v0/tasks/timeline", {}, "download=1", _access(bob)) is not None


def test_cluster_events_need_no_job() -> None:
    bob = _viewer("developers", name="bob")
    assert _scope("/events", {}, "job_id=global", _access(bob)) is None
    assert _scope("/events", {}, "", _access(bob)) is None


def test_an_actor_reported_without_its_job_belongs_to_the_job_in_its_id() -> None:
    actors = {
        "result": True,
        "data": {
            "actors": {
                "83eef5c1bb180283fc3daf4801000000": {
                    "actorId": "ffffffffffffffffffffffffffffffff",
                    "jobId": "ffffffff",
                },
                "93eef5c1bb180283fc3daf4802000000": {
                    "actorId": "93eef5c1bb180283fc3daf4802000000",
                    "jobId": "ffffffff",
                },
                "a3eef5c1bb180283fc3daf48ffffffff": {
                    "actorId": "a3eef5c1bb180283fc3daf48ffffffff",
                    "jobId": "ffffffff",
                },
            }
        },
    }
    alice = _viewer("developers")
    body, shown = _filter("/logical/actors", alice, json.dumps(actors).encode(), _access(alice))
    assert list(json.loads(body)["data"]["actors"]) == ["83eef5c1bb180283fc3daf4801000000"]
    assert shown == {"shown": 1, "hidden": 2}
    detail = {"result": True, "data": {"detail": {"actorId": "f" * 32, "jobId": "ffffffff", "name": "mine"}}}
    body, _ = _filter(
        "/logical/actors/{actor_id}",
        alice,
        json.dumps(detail).encode(),
        _access(alice),
        "",
        {"actor_id": "83eef5c1bb180283fc3daf4801000000"},
    )
    assert json.loads(body)["data"]["detail"]["name"] == "mine"
