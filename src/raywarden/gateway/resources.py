"""Build what a request is decided on: the principal, the resource (from path, body or Ray's record) and the
context (auth method, source address, credential age, time)."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from raywarden.gateway.auth import Identity
from raywarden.gateway.jobs import JobSubmitBody
from raywarden.gateway.routes import Match
from raywarden.gateway.upstream import Upstream
from raywarden.policy.engine import CLUSTER_ID, Entity
from raywarden.policy.entities import (
    job_entity,
    new_job_entity,
    package_entity,
    principal_entity,
    request_context_at,
)

# When the age of a credential cannot be read it counts as very old: a policy asking for a fresh
# credential then refuses, rather than trusting an age nobody measured.
UNKNOWN_AGE_S = 10 * 365 * 86400


@dataclass(frozen=True)
class Resource:
    entity: Entity
    # False for a job id that Ray does not know: the gateway answers 404 itself (after deciding), so that a
    # missing job and a job the caller may not view look the same.
    known: bool = True


@functools.lru_cache(maxsize=1024)
def _principal(spiffe_id: str, kind: str, name: str, groups: tuple[str, ...]) -> Entity:
    return principal_entity(spiffe_id, kind, name, groups)


def principal_for(identity: Identity) -> Entity:
    return _principal(identity.spiffe_id, identity.kind, identity.name, identity.groups)


async def resource_for(
    found: Match, identity: Identity, submission: JobSubmitBody | None, upstream: Upstream
) -> Resource:
    kind = found.route.resource
    if kind in ("cluster", "control"):
        return Resource(Entity("Cluster", CLUSTER_ID))
    if kind == "package":
        return Resource(package_entity(found.params["package_name"]))
    if kind == "new_job":
        if submission is None:
            raise ValueError("a job submission route without a parsed body")
        return Resource(new_job_entity(submission.model_dump(exclude_none=True), identity.spiffe_id))
    job_id = found.params["job_id"]
    # The owner comes from Ray's record of the job, where the gateway wrote it at submission.
    info = await upstream.job_info(job_id)
    return Resource(job_entity(job_id, info), known=info is not None)


def context_for(
    identity: Identity, source: str, peer_cert_der: bytes | None, authorization: str | None, now: float | None = None
) -> dict[str, Any]:
    moment = time.time() if now is None else now
    issued = _issued_at(identity, peer_cert_der, authorization)
    age = moment - issued if issued is not None else UNKNOWN_AGE_S
    return request_context_at(identity.auth_method, source, age, moment)


def _issued_at(identity: Identity, der: bytes | None, authorization: str | None) -> float | None:
    """When the credential the identity came from was issued (the authenticator already verified it)."""
    if identity.auth_method == "certificate" and der:
        return _cert_not_before(der)
    if authorization:
        return _jwt_issued_at(authorization.strip().partition(" ")[2].strip())
    return None


@functools.lru_cache(maxsize=1024)
def _cert_not_before(der: bytes) -> float | None:
    try:
        return x509.load_der_x509_certificate(der).not_valid_before_utc.timestamp()
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _jwt_issued_at(token: str) -> float | None:
    parts = token.split(".")
    if len(parts) < 2:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    value = claims.get("iat") if isinstance(claims, dict) else None
    return float(value) if isinstance(value, int | float) else None
