"""Job submission bodies: parsed strictly, owner stamped by the gateway, re-serialised for Ray."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raywarden.gateway.bodies import BadBody, load_json
from raywarden.gateway.responses import Refusal
from raywarden.policy.jobattrs import OWNER_KEY

__all__ = ["OWNER_KEY", "BadJobBody", "JobSubmitBody", "effective_submission_id", "parse_submission", "stamp_owner"]


class JobSubmitBody(BaseModel):
    """Ray 2.60's JobSubmitRequest (dashboard/modules/job/common.py). Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=False)

    entrypoint: str = Field(min_length=1, max_length=64 * 1024)
    submission_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-.]{0,127}$")
    job_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-.]{0,127}$")
    runtime_env: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    entrypoint_num_cpus: int | float | None = Field(default=None, ge=0)
    entrypoint_num_gpus: int | float | None = Field(default=None, ge=0)
    entrypoint_memory: int | None = Field(default=None, ge=0)
    entrypoint_resources: dict[str, float] | None = None
    entrypoint_label_selector: dict[str, str] | None = None


class BadJobBody(Refusal):
    def __init__(self, detail: str) -> None:
        super().__init__(
            400,
            f"invalid job submission: {detail}",
            hint="send Ray's JobSubmitRequest as one JSON object (`raywarden job submit` and `ray job submit` do)",
        )


def parse_submission(body: bytes) -> JobSubmitBody:
    """The body, parsed within bounds (gateway/bodies.py) and validated field by field."""
    try:
        data = load_json(body)
    except BadBody as exc:
        raise BadJobBody(exc.message) from None
    if not isinstance(data, dict):
        raise BadJobBody("body must be a JSON object")
    try:
        return JobSubmitBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadJobBody(f"{where}: {first['msg']}") from None


def effective_submission_id(job: JobSubmitBody) -> str | None:
    """The id Ray files the job under: ``submission_id``, else the deprecated ``job_id`` (Ray's job agent)."""
    return job.submission_id or job.job_id


def stamp_owner(job: JobSubmitBody, owner: str) -> bytes:
    """Write the caller's SPIFFE ID into the metadata, overwriting whatever the client claimed."""
    metadata = dict(job.metadata or {})
    metadata[OWNER_KEY] = owner
    stamped = job.model_copy(update={"metadata": metadata})
    return json.dumps(stamped.model_dump(exclude_none=True), separators=(",", ":")).encode()
