"""The jobs still running on this head, asked of Ray on loopback (so `down` can name them before it stops)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from raywarden.cluster.procs import alive
from raywarden.cluster.ray_head import HEAD_ADDRESS
from raywarden.cluster.runstate import read_run_state
from raywarden.errors import RaywardenError
from raywarden.files import read_private
from raywarden.gateway.owner_seal import CLAIMED_KEY, OUTSIDE_TEXT, OwnerSeal
from raywarden.state import StateDir

ACTIVE = ("PENDING", "RUNNING")


@dataclass(frozen=True)
class RunningJob:
    submission_id: str
    status: str
    owner: str
    entrypoint: str


def running_jobs(state: StateDir) -> list[RunningJob]:
    """Jobs that are PENDING or RUNNING. Raises RaywardenError when Ray cannot be asked."""
    run = read_run_state(state)
    if run is None or not alive(run.ray_pid):
        return []
    try:
        token = read_private(state.ray_token).decode().strip()
        resp = requests.get(
            f"http://{HEAD_ADDRESS}:{run.ports.dashboard}/api/jobs/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        resp.raise_for_status()
        jobs = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise RaywardenError(f"cannot ask Ray which jobs are running ({type(exc).__name__})") from None
    seal = OwnerSeal.for_state(state)
    found = []
    for job in jobs if isinstance(jobs, list) else []:
        if not isinstance(job, dict) or job.get("status") not in ACTIVE:
            continue
        found.append(
            RunningJob(
                submission_id=str(job.get("submission_id") or job.get("job_id") or "?"),
                status=str(job.get("status")),
                owner=_owner(seal, job),
                entrypoint=str(job.get("entrypoint") or ""),
            )
        )
    return found


def _owner(seal: OwnerSeal, job: dict[str, Any]) -> str:
    """The owner the gateway sealed, or what a job from elsewhere claims, said to be a claim."""
    owner = seal.owner_of(job)
    if owner is not None:
        return owner
    claimed = seal.vouch(job)["metadata"].get(CLAIMED_KEY)
    return f"({OUTSIDE_TEXT}" + (f", claims {claimed})" if claimed else ")")
