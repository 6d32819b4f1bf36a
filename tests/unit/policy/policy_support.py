"""Building policy requests for unit tests, the way the gateway builds them."""

from __future__ import annotations

from typing import Any

from raywarden.config import ClusterConfig
from raywarden.policy.engine import CLUSTER_ID, Decision, Entity, PolicyEngine, PolicyRequest
from raywarden.policy.entities import (
    cluster_entity,
    job_entity,
    new_job_entity,
    package_entity,
    principal_entity,
    request_context,
)
from raywarden.policy.jobattrs import OWNER_KEY
from raywarden.policy.serveattrs import new_serve_app_attrs, new_serve_app_entity, serve_app_entity, serve_context

TD = "td.test"
CONTEXT = request_context("certificate", "127.0.0.1", 60)


def spiffe(name: str, kind: str = "user") -> str:
    return f"spiffe://{TD}/{kind}/{name}"


def principal(name: str, *groups: str, kind: str = "user") -> Entity:
    return principal_entity(spiffe(name, kind), kind, name, groups)


def job(owner: str | None, job_id: str = "raysubmit_1", status: str = "RUNNING") -> Entity:
    metadata = {OWNER_KEY: spiffe(owner)} if owner else {}
    return job_entity(
        job_id,
        {
            "submission_id": job_id,
            "job_id": "02000000",
            "status": status,
            "entrypoint": "python x.py",
            "type": "SUBMISSION",
            "metadata": metadata,
        },
    )


def submission(submitter: str, **body: Any) -> Entity:
    return new_job_entity({"entrypoint": "python main.py", **body}, spiffe(submitter))


def serve_app(owner: str | None, groups: tuple[str, ...] = (), name: str = "llm") -> Entity:
    """A Serve application Ray runs, owned by ``owner`` (None: not deployed through the gateway)."""
    return serve_app_entity(
        name, route_prefix=f"/{name}", deployments=["Model"], owner=spiffe(owner) if owner else "", invoke_groups=groups
    )


def new_serve_app(owner: str, *, exists: bool = False, overlapped: tuple[str, ...] = (), **config: Any) -> Entity:
    """What a deploy asks of one application (its config as in `serve build` output)."""
    app = {"name": "llm", "route_prefix": "/llm", "import_path": "apps:model", **config}
    attrs = new_serve_app_attrs(
        app, exists=exists, owner=spiffe(owner), overlapped_owners=overlapped, invoke_groups=["app-users"]
    )
    return new_serve_app_entity(attrs)


def serve_call_context(key_apps: tuple[str, ...] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    return serve_context(base or CONTEXT, "POST", "/v1/chat/completions", key_apps, None)


def context_for(action: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The context the gateway gives ``action``: a Serve call's carries its method and path too."""
    return serve_call_context(None, base) if action == "serve.invoke" else (base or CONTEXT)


def resource_for(action: str, owner: str | None = "alice") -> Entity:
    if action == "serve.deploy":
        return new_serve_app(owner or "alice", exists=owner is None)
    if action.startswith("serve."):
        return serve_app(owner, ("app-users",))
    if action in ("cluster.version", "jobs.list") or action.startswith("identity."):
        return Entity("Cluster", CLUSTER_ID)
    if action.startswith("packages."):
        return package_entity("_ray_pkg_abc.zip")
    if action == "jobs.submit":
        return submission(owner or "alice")
    return job(owner)


def engine(
    config: ClusterConfig | None = None, extra: list[tuple[str, str]] | None = None, cache_size: int | None = None
) -> PolicyEngine:
    """``cache_size=0``: every decision of the gateway's path through Cedar, none from the decision cache."""
    from raywarden.policy.engine import default_policy_files

    files = [*default_policy_files(), *(extra or [])]
    if cache_size is None:
        return PolicyEngine.from_sources(files, cluster_entity(config))
    return PolicyEngine.from_sources(files, cluster_entity(config), cache_size=cache_size)


def decide(
    eng: PolicyEngine, who: Entity, action: str, resource: Entity, context: dict[str, Any] | None = None
) -> Decision:
    # strict: the entities and context must also match the schema, as the gateway's would.
    return eng.decide(PolicyRequest(who, action, resource, context or CONTEXT), strict=True)
