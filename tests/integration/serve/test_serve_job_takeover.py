"""A developer who may not touch another owner's Serve application through the gateway must not take it over
from a job either.

A job runs in Ray and may call `serve.run` itself, under the name and prefix of an application someone owns.
The owner and invoker groups the gateway recorded hold only while Serve runs the config deployed through the
gateway (gateway/serve/table.py): the replacement is nobody's, only admins may call it, and an
`app_replaced` event is audited.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import pytest
import requests

from tests.integration.serve.conftest import EXAMPLES, ServeCluster
from tests.support import Cluster

pytestmark = pytest.mark.integration
OWN = "/raywarden/v1/serve/applications"
TAKEOVER = """
import ray
from ray import serve
from starlette.requests import Request

ray.init()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class TakenOver:
    async def __call__(self, request: Request) -> dict[str, str]:
        return {"answered_by": "job", "body": (await request.body()).decode()}


serve.run(TakenOver.bind(), name="ownedapp", route_prefix="/ownedapp", blocking=False)
"""
REMOVE = """
import ray
from ray import serve

ray.init()
serve.delete("ownedapp")
"""


def _job(cluster: Cluster, cert: tuple[str, str], script: str) -> str:
    entrypoint = f"python -c \"import base64; exec(base64.b64decode('{base64.b64encode(script.encode()).decode()}'))\""
    job = requests.post(
        cluster.url + "/api/jobs/", json={"entrypoint": entrypoint}, cert=cert, verify=cluster.ca, timeout=120
    )
    assert job.status_code == 200, job.text
    return str(job.json()["job_id"])


def _finished(cluster: Cluster, cert: tuple[str, str], job_id: str) -> bool:
    status = requests.get(f"{cluster.url}/api/jobs/{job_id}", cert=cert, verify=cluster.ca, timeout=60)
    return status.json().get("status") in ("SUCCEEDED", "FAILED", "STOPPED")


def _wait(what: str, check: Callable[[], bool], timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:.0f}s"
        time.sleep(1)


def test_a_job_cannot_take_over_another_owners_application(serve_cluster: ServeCluster) -> None:
    cluster = serve_cluster.cluster
    owner = cluster.issue("app-owner", groups=("developers",))
    other = cluster.issue("other-dev", groups=("developers",))
    caller = serve_cluster.keys["chatbot"]  # in app-users
    body = {
        "applications": [{"name": "ownedapp", "route_prefix": "/ownedapp", "import_path": f"{EXAMPLES}:echo"}],
        "raywarden": {"apps": {"ownedapp": {"invoke_groups": ["app-users"]}}},
    }
    made = requests.put(cluster.url + OWN, json=body, cert=owner, verify=cluster.ca, timeout=120)
    assert made.status_code == 200, made.text
    _wait("ownedapp answering", lambda: serve_cluster.call("POST", "/ownedapp/x", caller).status_code == 200)

    try:
        job_id = _job(cluster, other, TAKEOVER)
        _wait("the job", lambda: _finished(cluster, other, job_id))

        def replaced_or_refused() -> bool:
            answer = serve_cluster.call("POST", "/ownedapp/x", caller, data=b"the caller's prompt")
            return answer.status_code != 200 or "answered_by" in answer.text

        _wait("Serve applying the job's app", replaced_or_refused, timeout_s=120)
        answer = serve_cluster.call("POST", "/ownedapp/x", caller, data=b"the caller's prompt")
        # The app under that name is no longer the owner's: it has no owner, and only admins may call it.
        assert answer.status_code == 403, (
            f"the owner's callers reach the job's code: {answer.status_code} {answer.text}"
        )
        # The gateway says so in the audit log, once the replacement outlasts a deploy in flight (two fetches).
        _wait(
            "an app_replaced record",
            lambda: any(
                r.get("event") == "app_replaced" and "ownedapp" in r.get("apps", []) for r in cluster.audit_records(0)
            ),
            timeout_s=60,
        )
        # A job's application is not the REST API's to replace: the owner is told why, and who may remove it.
        again = requests.put(cluster.url + OWN, json=body, cert=owner, verify=cluster.ca, timeout=120)
        assert again.status_code == 409 and "made by a job" in again.json()["error"], again.text
    finally:
        removal = _job(cluster, other, REMOVE)
        _wait("the job's removal", lambda: _finished(cluster, other, removal))
        _wait("ownedapp gone", lambda: serve_cluster.call("POST", "/ownedapp/x", caller).status_code == 404)
