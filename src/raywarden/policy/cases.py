"""Policy test cases (principal, groups, action, resource attributes -> expected decision) and their replay.

The format is documented in docs/policy.md. Entities are built by raywarden.policy.entities, exactly as the
gateway builds them, and checked against the schema (strict decisions), so a case cannot pass on a request
the gateway would never make.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raywarden.config import ClusterConfig
from raywarden.errors import PolicyError, UsageError
from raywarden.identity.names import principal_name
from raywarden.policy.engine import CLUSTER_ID, Decision, Entity, PolicyEngine, PolicyRequest
from raywarden.policy.entities import (
    job_entity,
    new_job_entity,
    package_entity,
    principal_entity,
    request_context,
)
from raywarden.policy.jobattrs import OWNER_KEY
from raywarden.policy.serveattrs import new_serve_app_attrs, new_serve_app_entity, serve_app_entity, serve_context

CLUSTER_ACTIONS_RESOURCE = "Cluster"


class CaseContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    auth_method: str = "certificate"
    source: str = "127.0.0.1"
    auth_age_s: float = 60.0
    time: dt.datetime | None = None
    # serve.invoke only: the call's method and path below the route prefix, an API key's app scope, a model id.
    method: str = "POST"
    path: str = "/"
    api_key_apps: list[str] | None = None
    model_id: str | None = None


class Case(BaseModel):
    """One expected decision."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    principal: str
    kind: str = Field(default="user", pattern="^(user|sa)$")
    groups: list[str] = Field(default_factory=list)
    action: str
    # jobs.submit: the submission body as sent to POST /api/jobs/. Job actions: owner (a name or SPIFFE ID),
    # status, entrypoint, submission_id, job_id, type. packages.*: name. serve.deploy: one application's config
    # (name, route_prefix, import_path, runtime_env, deployments) plus owner, exists, overlapped_owners and
    # invoke_groups. Other serve.* actions: name, route_prefix, deployments, owner, invoke_groups.
    resource: dict[str, Any] = Field(default_factory=dict)
    context: CaseContext = Field(default_factory=CaseContext)
    expect: str = Field(pattern="^(allow|deny)$")
    # Optional: the ids of the policies expected to determine the decision (exactly these).
    policies: list[str] | None = None


class CaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trust_domain: str | None = None
    # Overrides of the cluster config's developer limits (developer_max_cpus, ...), for these cases only.
    limits: dict[str, Any] = Field(default_factory=dict)
    cases: list[Case]


@dataclass
class CaseResult:
    case: Case
    decision: Decision
    passed: bool
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.case.name or f"{self.case.principal} {self.case.action}",
            "passed": self.passed,
            "expected": self.case.expect,
            "decision": "allow" if self.decision.allowed else "deny",
            "policy_ids": list(self.decision.policy_ids),
            "problems": self.problems,
        }


def load_cases(path: Path) -> CaseFile:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    try:
        return CaseFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{path}: {where}: {first['msg']}", hint="see docs/policy.md for the case format") from None


def config_with_limits(config: ClusterConfig | None, limits: dict[str, Any]) -> ClusterConfig:
    base = config or ClusterConfig()
    try:
        return ClusterConfig.model_validate({**base.model_dump(), **limits})
    except ValidationError as exc:
        raise UsageError(f"limits: {exc.errors()[0]['msg']}") from None


def spiffe_of(name: str, kind: str, trust_domain: str) -> str:
    return name if name.startswith("spiffe://") else f"spiffe://{trust_domain}/{kind}/{name}"


def build_request(case: Case, trust_domain: str) -> PolicyRequest:
    principal_id = spiffe_of(case.principal, case.kind, trust_domain)
    name = principal_name(principal_id)
    principal = principal_entity(principal_id, case.kind, name, tuple(case.groups))
    ctx = case.context
    context = request_context(ctx.auth_method, ctx.source, ctx.auth_age_s, ctx.time)
    if case.action == "serve.invoke":
        apps = tuple(ctx.api_key_apps) if ctx.api_key_apps is not None else None
        context = serve_context(context, ctx.method, ctx.path, apps, ctx.model_id)
    return PolicyRequest(
        principal, case.action, resource_entity(case.action, case.resource, principal_id, trust_domain), context
    )


def resource_entity(action: str, attrs: dict[str, Any], principal_id: str, trust_domain: str) -> Entity:
    """The resource of ``action`` described by ``attrs``, as the gateway would build it."""
    if action == "jobs.submit":
        body = {"entrypoint": "python main.py", **attrs}
        return new_job_entity(body, principal_id)
    if action.startswith("jobs.") and action != "jobs.list":
        info = {k: v for k, v in attrs.items() if k != "owner"}
        info.setdefault("status", "RUNNING")
        info.setdefault("type", "SUBMISSION")
        if attrs.get("owner"):
            info["metadata"] = {OWNER_KEY: spiffe_of(str(attrs["owner"]), "user", trust_domain)}
        job_id = str(attrs.get("submission_id") or attrs.get("job_id") or "raysubmit_test")
        return job_entity(job_id, info)
    if action.startswith("packages."):
        return package_entity(str(attrs.get("name", "_ray_pkg_test.zip")))
    if action == "serve.deploy":
        owner = spiffe_of(str(attrs["owner"]), "user", trust_domain) if attrs.get("owner") else principal_id
        overlapped = [spiffe_of(str(o), "user", trust_domain) if o else "" for o in attrs.get("overlapped_owners", [])]
        app = {k: v for k, v in attrs.items() if k not in ("owner", "exists", "overlapped_owners", "invoke_groups")}
        return new_serve_app_entity(
            new_serve_app_attrs(
                {"name": "app", **app},
                exists=bool(attrs.get("exists", False)),
                owner=owner,
                overlapped_owners=overlapped,
                invoke_groups=[str(g) for g in attrs.get("invoke_groups", [])],
            )
        )
    if action.startswith("serve."):
        owner = spiffe_of(str(attrs["owner"]), "user", trust_domain) if attrs.get("owner") else ""
        return serve_app_entity(
            str(attrs.get("name", "app")),
            route_prefix=attrs.get("route_prefix"),
            deployments=[str(d) for d in attrs.get("deployments", [])],
            owner=owner,
            invoke_groups=[str(g) for g in attrs.get("invoke_groups", [])],
        )
    return Entity("Cluster", CLUSTER_ID)


def run_cases(engine: PolicyEngine, cases: CaseFile, trust_domain: str) -> list[CaseResult]:
    results = []
    for case in cases.cases:
        request = build_request(case, cases.trust_domain or trust_domain)
        try:
            decision = engine.decide(request, strict=True)
        except PolicyError as exc:
            results.append(CaseResult(case, Decision(False, (), (exc.message,)), False, [exc.message]))
            continue
        problems = []
        if decision.allowed != (case.expect == "allow"):
            problems.append(
                f"expected {case.expect}, got {'allow' if decision.allowed else 'deny'} ({decision.reason})"
            )
            if not decision.allowed:  # what would have to change
                problems.append(f"why: {engine.explain(request).summary()}")
        if case.policies is not None and sorted(case.policies) != list(decision.policy_ids):
            problems.append(f"expected policies {sorted(case.policies)}, got {list(decision.policy_ids)}")
        results.append(CaseResult(case, decision, not problems, problems))
    return results
