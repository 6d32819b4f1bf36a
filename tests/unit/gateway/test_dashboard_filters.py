"""Dashboard answers reduced per job and redacted: the same decisions as the Jobs API (gateway/filters.py)."""

from __future__ import annotations

import json

import pytest

from raywarden.gateway.filters import (
    REDACTED,
    Viewer,
    driver_log_job,
    filter_dashboard,
    job_access,
    redact_runtime_envs,
)
from raywarden.policy.entities import request_context
from tests.unit.policy.policy_support import engine, principal, spiffe

pytestmark = pytest.mark.unit
ENGINE = engine()
CONTEXT = request_context("session", "127.0.0.1", 10)
SECRET = "hunter2"
RAY_JOBS = json.dumps([
    {"submission_id": "s-alice", "job_id": "01000000", "status": "RUNNING", "entrypoint": "x", "type": "SUBMISSION",
     "metadata": {"raywarden.owner": spiffe("alice")}, "runtime_env": {"env_vars": {"K": SECRET}}},
    {"submission_id": "s-bob", "job_id": "02000000", "status": "RUNNING", "entrypoint": "x", "type": "SUBMISSION",
     "metadata": {"raywarden.owner": spiffe("bob")}},
]).encode()


def _viewer(*groups: str, name: str = "alice") -> Viewer:
    return Viewer(ENGINE, principal(name, *groups), CONTEXT)


def _tasks() -> bytes:
    env = json.dumps({"env_vars": {"K": SECRET}, "pip": ["x"]})
    tasks = [{"task_id": "t1", "job_id": "01000000", "runtime_env_info": {"serialized_runtime_env": env}},
             {"task_id": "t2", "job_id": "02000000", "runtime_env_info": {"serialized_runtime_env": env}},
             {"task_id": "t3", "job_id": "03000000"}]
    return json.dumps({"result": True, "msg": "", "data": {"result": {
        "total": 3, "num_after_truncation": 3, "num_filtered": 3, "result": tasks}}}).encode()


def test_a_developer_sees_only_tasks_of_own_jobs_with_values() -> None:
    viewer = _viewer("developers")
    body, shown = filter_dashboard("/api/v0/tasks", viewer, _tasks(), job_access(viewer, RAY_JOBS))
    data = json.loads(body)["data"]["result"]
    assert [t["task_id"] for t in data["result"]] == ["t1"] and data["total"] == 1
    assert shown == {"shown": 1, "hidden": 2}
    assert SECRET in body.decode()  # the owner holds jobs.read_env


def test_a_viewer_sees_every_task_without_values() -> None:
    viewer = _viewer("viewers", name="vera")
    body, shown = filter_dashboard("/api/v0/tasks", viewer, _tasks(), job_access(viewer, RAY_JOBS))
    assert shown["shown"] == 3 and SECRET not in body.decode()
    inner = json.loads(json.loads(body)["data"]["result"]["result"][0]["runtime_env_info"]["serialized_runtime_env"])
    assert inner == {"env_vars": {"K": REDACTED}, "pip": ["x"]}


def test_actor_table_and_runtime_envs() -> None:
    actors = {"result": True, "data": {"actors": {
        "a1": {"jobId": "01000000", "runtimeEnv": {"env_vars": {"K": SECRET}}},
        "a2": {"jobId": "02000000"}}}}
    viewer = _viewer("developers", name="bob")
    body, shown = filter_dashboard("/logical/actors", viewer, json.dumps(actors).encode(),
                                   job_access(viewer, RAY_JOBS))
    assert list(json.loads(body)["data"]["actors"]) == ["a2"] and shown == {"shown": 1, "hidden": 1}
    envs = {"data": {"result": {"result": [{"runtime_env": {"env_vars": {"K": SECRET}}}]}}}
    admin_body, _ = filter_dashboard("/api/v0/runtime_envs", _viewer("admins"), json.dumps(envs).encode(), None)
    assert SECRET not in admin_body.decode()  # not tied to a job: redacted for everyone


def test_profiling_flag_follows_the_policy() -> None:
    answer = json.dumps({"result": True, "data": {"profilingEnabled": True, "profilingDefaults": {}}}).encode()
    viewer_body, _ = filter_dashboard("/api/profiling_enabled", _viewer("viewers"), answer, None)
    admin_body, _ = filter_dashboard("/api/profiling_enabled", _viewer("admins"), answer, None)
    assert json.loads(viewer_body)["data"]["profilingEnabled"] is False
    assert json.loads(admin_body)["data"]["profilingEnabled"] is True


def test_redaction_reaches_nested_and_unreadable_envs() -> None:
    value = {"a": [{"runtime_env": {"env_vars": {"X": "1"}, "conda": {"variables": {"Y": "2"}}}}],
             "serialized_runtime_env": "{not json"}
    out = redact_runtime_envs(value)
    assert out["a"][0]["runtime_env"]["env_vars"] == {"X": REDACTED}
    assert out["a"][0]["runtime_env"]["conda"]["variables"] == {"Y": REDACTED}
    assert out["serialized_runtime_env"] == REDACTED


def test_driver_log_requests_name_exactly_one_job() -> None:
    assert driver_log_job("node_id=ab&filename=job-driver-raysubmit_1.log&lines=50000&filter_ansi_code=true") == \
        "raysubmit_1"
    for query in ("filename=job-driver-x.log&actor_id=a", "filename=../job-driver-x.log", "filename=worker-1.out",
                  "filename=job-driver-x.log&filename=job-driver-y.log", "filename=job-driver-a/b.log", ""):
        assert driver_log_job(query) is None, query
