"""Job submission bodies: parsed strictly, owner stamped by the gateway, re-serialised for Ray."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raywarden.policy.jobattrs import OWNER_KEY

__all__ = ["OWNER_KEY", "BadJobBody", "JobSubmitBody", "parse_submission", "stamp_owner"]


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


class BadJobBody(ValueError):
    pass


def parse_submission(body: bytes) -> JobSubmitBody:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadJobBody(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadJobBody("body must be a JSON object")
    try:
        return JobSubmitBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadJobBody(f"{where}: {first['msg']}") from None


def stamp_owner(job: JobSubmitBody, owner: str) -> bytes:
    """Write the caller's SPIFFE ID into the metadata, overwriting whatever the client claimed."""
    metadata = dict(job.metadata or {})
    metadata[OWNER_KEY] = owner
    stamped = job.model_copy(update={"metadata": metadata})
    return json.dumps(stamped.model_dump(exclude_none=True), separators=(",", ":")).encode()
