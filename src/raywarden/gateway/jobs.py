"""Job submission bodies: parsed strictly, owner stamped by the gateway, re-serialised for Ray."""

from __future__ import annotations

import json
import secrets
import string
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from raywarden.gateway.bodies import BadBody, load_json
from raywarden.gateway.owner_seal import CLAIMED_KEY, OUTSIDE_KEY, SEAL_KEY, OwnerSeal
from raywarden.gateway.responses import Refusal
from raywarden.policy.jobattrs import OWNER_KEY

__all__ = ["OWNER_KEY", "BadJobBody", "JobSubmitBody", "effective_submission_id", "parse_submission", "stamp_owner"]

# Bounds of a submission: far above what any cluster offers one entrypoint, far below what overflows Ray (which
# keeps resource amounts as int64 ten-thousandths) or the policy's Longs (amounts in thousandths).
MAX_AMOUNT = 1_000_000  # CPUs, GPUs, or one custom resource
MAX_MEMORY_BYTES = 2**49  # 512 TiB
MAX_ENTRIES = 64  # custom resources, label selectors, metadata entries
MAX_NAME = 256  # a resource name, label key, or metadata key
MAX_LABEL_VALUE = 1024
MAX_METADATA_VALUE = 16 * 1024

_Amount = Annotated[int | float, Field(ge=0, le=MAX_AMOUNT)]
_Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]


class JobSubmitBody(BaseModel):
    """Ray 2.60's JobSubmitRequest (dashboard/modules/job/common.py). Unknown fields are refused, and amounts and
    maps are bounded (MAX_*): anything beyond is a 400 that says which field and which bound."""

    model_config = ConfigDict(extra="forbid", strict=False)

    entrypoint: str = Field(min_length=1, max_length=64 * 1024)
    submission_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-.]{0,127}$")
    job_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-.]{0,127}$")
    runtime_env: dict[str, Any] | None = None
    metadata: (
        Annotated[
            dict[
                Annotated[str, StringConstraints(max_length=MAX_NAME)],
                Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)],
            ],
            Field(max_length=MAX_ENTRIES),
        ]
        | None
    ) = None
    entrypoint_num_cpus: _Amount | None = None
    entrypoint_num_gpus: _Amount | None = None
    entrypoint_memory: Annotated[int, Field(ge=0, le=MAX_MEMORY_BYTES)] | None = None
    entrypoint_resources: Annotated[dict[_Name, _Amount], Field(max_length=MAX_ENTRIES)] | None = None
    entrypoint_label_selector: (
        Annotated[
            dict[_Name, Annotated[str, StringConstraints(max_length=MAX_LABEL_VALUE)]], Field(max_length=MAX_ENTRIES)
        ]
        | None
    ) = None


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


def _random_id() -> str:
    """16 letters and digits, like the ids Ray gives submissions without one (job_manager generate_job_id)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


def effective_submission_id(job: JobSubmitBody) -> str | None:
    """The id Ray files the job under: ``submission_id``, else the deprecated ``job_id`` (Ray's job agent)."""
    return job.submission_id or job.job_id


def stamp_owner(job: JobSubmitBody, owner: str, seal: OwnerSeal) -> bytes:
    """Write the caller's SPIFFE ID and the gateway's seal over it into the metadata, overwriting whatever the
    client claimed (gateway/owner_seal.py). A submission without an id gets one, as Ray would give it: the seal
    names the submission."""
    metadata = {k: v for k, v in (job.metadata or {}).items() if k not in (OUTSIDE_KEY, CLAIMED_KEY)}
    update: dict[str, Any] = {}
    submission_id = effective_submission_id(job)
    if submission_id is None:
        submission_id = update["submission_id"] = f"raysubmit_{_random_id()}"
    metadata[OWNER_KEY] = owner
    metadata[SEAL_KEY] = seal.seal(submission_id, owner, job.entrypoint, job.runtime_env)
    update["metadata"] = metadata
    stamped = job.model_copy(update=update)
    return json.dumps(stamped.model_dump(exclude_none=True), separators=(",", ":")).encode()
