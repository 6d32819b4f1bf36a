"""A developer who may not touch another owner's Serve application through the gateway must not take it over
from a job either.

A job runs in Ray and may call `serve.run` itself (docs/serve.md: "An application started by a job has no
owner: only admins may call or change it"). The gateway knows an application's owner and invoke groups by its
name alone (gateway/serve/table.py), so a job that runs its own code under the name of an owned application
keeps that owner and those groups: the owner's callers are still let in, and their requests, bodies included,
reach the job author's code.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import pytest
import requests

from tests.integration.serve.conftest import EXAMPLES, ServeCluster

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

    entrypoint = (
        f"python -c \"import base64; exec(base64.b64decode('{base64.b64encode(TAKEOVER.encode()).decode()}'))\""
    )
    job = requests.post(
        cluster.url + "/api/jobs/", json={"entrypoint": entrypoint}, cert=other, verify=cluster.ca, timeout=120
    )
    assert job.status_code == 200, job.text
    job_id = job.json()["job_id"]

    def finished() -> bool:
        status = requests.get(f"{cluster.url}/api/jobs/{job_id}", cert=other, verify=cluster.ca, timeout=60)
        return status.json().get("status") in ("SUCCEEDED", "FAILED", "STOPPED")

    _wait("the job", finished)

    def replaced_or_refused() -> bool:
        answer = serve_cluster.call("POST", "/ownedapp/x", caller, data=b"the caller's prompt")
        return answer.status_code != 200 or "answered_by" in answer.text

    _wait("Serve applying the job's app", replaced_or_refused, timeout_s=120)
    answer = serve_cluster.call("POST", "/ownedapp/x", caller, data=b"the caller's prompt")
    # The app under that name is no longer the owner's: it has no owner, and only admins may call it.
    assert answer.status_code == 403, f"the owner's callers reach the job's code: {answer.status_code} {answer.text}"
