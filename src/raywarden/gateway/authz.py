"""The policy request of one exchange and its decision: the principal (from the identity), the resource (from
the path, the parsed body or Ray's record of a job) and the context (how and when the caller authenticated,
from where). Cedar decides (policy/engine.py); this module only builds what it decides on."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raywarden.errors import PolicyError
from raywarden.gateway.authn import Identity
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.jobrecords import JobRecords
from raywarden.gateway.responses import HINT_ASK_ADMIN, Refusal
from raywarden.gateway.route_model import Route, Routed
from raywarden.policy.engine import CLUSTER_ID, Decision, Entity, PolicyEngine, PolicyRequest
from raywarden.policy.entities import (
    job_entity,
    new_job_entity,
    package_entity,
    principal_entity,
    request_context_at,
)
from raywarden.policy.explain import Explanation

# When the age of a credential is unknown it counts as very old: a policy asking for a fresh credential then
# refuses, rather than trusting an age nobody measured.
UNKNOWN_AGE_S = 10 * 365 * 86400
NOT_FOUND_MESSAGE = "no such job"
NOT_FOUND_HINT = "`raywarden job list` shows the jobs you may see"
CLUSTER = Entity("Cluster", CLUSTER_ID)


@dataclass(frozen=True)
class Viewer:
    """Who a decision or an answer is for, as the policy sees them."""

    engine: PolicyEngine
    principal: Entity
    context: dict[str, Any]

    def decide(self, action: str, resource: Entity) -> Decision:
        return self.engine.decide(PolicyRequest(self.principal, action, resource, self.context))

    def decide_many(self, pairs: Sequence[tuple[str, Entity]]) -> list[Decision]:
        """Several decisions in one batch (one Cedar call for a job list)."""
        return self.engine.decide_many([PolicyRequest(self.principal, a, r, self.context) for a, r in pairs])


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


def context_for(identity: Identity, source: str, now: float | None = None) -> dict[str, Any]:
    """The request context; the credential's age comes from the authenticator (``Identity.issued_at``)."""
    moment = time.time() if now is None else now
    age = moment - identity.issued_at if identity.issued_at is not None else UNKNOWN_AGE_S
    return request_context_at(identity.auth_method, source, age, moment)


def viewer_for(ex: Exchange, identity: Identity) -> Viewer:
    return Viewer(ex.engine, principal_for(identity), context_for(identity, ex.source))


# Besides the route's own action, a job's entity is decided on for these (the 404 for a job the caller may not
# view, and the redaction of its env values).
_JOB_ACTIONS = ("jobs.read", "jobs.read_env")


def reads_job_status(engine: PolicyEngine, action: str) -> bool:
    """Whether any policy deciding on a job for ``action`` reads its status, the one attribute that changes."""
    return any("status" in engine.reads(a) for a in (action, *_JOB_ACTIONS))


async def resource_for(
    ex: Exchange, found: Routed, identity: Identity, jobs: JobRecords, submission: dict[str, Any] | None = None
) -> Resource:
    kind = found.route.resource
    if kind == "cluster":
        return Resource(CLUSTER)
    if kind == "package":
        return Resource(package_entity(found.params["package_name"]))
    if kind == "new_job":
        if submission is None:
            raise Refusal(400, "a job submission needs a body", hint="send Ray's JobSubmitRequest as JSON")
        return Resource(new_job_entity(submission, identity.spiffe_id))
    job_id = found.params["job_id"]
    # The owner comes from Ray's record of the job, where the gateway wrote it at submission.
    started = time.monotonic()
    try:
        info = await jobs.info(job_id, fresh=reads_job_status(ex.engine, found.route.action))
    finally:
        ex.spent("job_lookup", started)
    return Resource(job_entity(job_id, info), known=info is not None)


def decide(ex: Exchange, viewer: Viewer, action: str, entity: Entity, groups: tuple[str, ...]) -> Decision:
    """Cedar's decision, and what it was made on, noted on the exchange for its decision record."""
    started = time.monotonic()
    decision = viewer.decide(action, entity)
    ex.spent("decision", started)
    note(ex, viewer, action, entity, decision, groups)
    return decision


def note(
    ex: Exchange, viewer: Viewer, action: str, entity: Entity, decision: Decision, groups: tuple[str, ...]
) -> None:
    ex.action, ex.resource, ex.policy_ids = action, f"{entity.type}::{entity.id}", decision.policy_ids
    ex.policy_input = {
        "groups": list(groups),
        "resource_attrs": entity.attrs,
        "context": {k: v for k, v in viewer.context.items() if k != "source"},
    }


def refusal_for(viewer: Viewer, action: str, entity: Entity, decision: Decision, *, job: bool) -> Refusal:
    """403 that names the action, the resource and what failed (Cedar's explanation); but on a job the caller
    may not even view, the answer reads like a missing job (404), and the explanation, which would name the
    job's owner, goes to the audit log only."""
    explanation = _explained(viewer, action, entity)
    if job and not (decision if action == "jobs.read" else viewer.decide("jobs.read", entity)).allowed:
        return Refusal(
            404,
            NOT_FOUND_MESSAGE,
            hint=NOT_FOUND_HINT,
            reason=f"{explanation.summary() if explanation else decision.reason}; answered 404 because the caller "
            "may not view this job",
        )
    if explanation is None:
        return Refusal(403, "forbidden", reason=decision.reason, hint=HINT_ASK_ADMIN)
    shown = {"reason": explanation.summary(where=False), "facts": explanation.facts()}
    return Refusal(403, "forbidden", reason=explanation.summary(), hint=HINT_ASK_ADMIN, shown=shown)


def _explained(viewer: Viewer, action: str, entity: Entity) -> Explanation | None:
    """Cedar's explanation of a refusal (refusals only: it asks Cedar again, strictly); None when the request
    does not fit the schema, whose message then stays the decision's own."""
    try:
        explanation = viewer.engine.explain(PolicyRequest(viewer.principal, action, entity, viewer.context))
    except PolicyError:
        return None
    return None if explanation.decision.allowed else explanation


def unknown_job(job_id: str) -> Refusal:
    return Refusal(404, NOT_FOUND_MESSAGE, hint=NOT_FOUND_HINT, reason=f"job {job_id} is unknown to Ray")


async def authorize(ex: Exchange, route: Route, identity: Identity, resource: Resource) -> Viewer:
    """Decide the route's action on ``resource``; raise the refusal when denied. The caller records the allow."""
    viewer = viewer_for(ex, identity)
    decision = decide(ex, viewer, route.action, resource.entity, identity.groups)
    if not decision.allowed:
        raise refusal_for(viewer, route.action, resource.entity, decision, job=route.resource == "job")
    return viewer
