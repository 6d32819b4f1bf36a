"""Load, validate and evaluate the Cedar policy set. Anything but an explicit permit is a denial."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from raywarden.errors import PolicyError

NAMESPACE = "Raywarden"
CLUSTER_ID = "ray"


def _shipped_text(name: str) -> str:
    return resources.files("raywarden.policy").joinpath(name).read_text()


def shipped_schema() -> str:
    return _shipped_text("schema.cedarschema")


def default_policy_files() -> list[tuple[str, str]]:
    folder = resources.files("raywarden.policy").joinpath("default")
    return sorted(
        (f"default/{entry.name}", entry.read_text()) for entry in folder.iterdir() if entry.name.endswith(".cedar")
    )


@dataclass(frozen=True)
class Entity:
    type: str  # without namespace, e.g. "Job"
    id: str
    attrs: dict[str, Any] = field(default_factory=dict)
    parents: tuple[tuple[str, str], ...] = ()

    def uid(self) -> dict[str, str]:
        return {"type": f"{NAMESPACE}::{self.type}", "id": self.id}

    def to_cedar(self) -> dict[str, Any]:
        return {
            "uid": self.uid(),
            "attrs": self.attrs,
            "parents": [{"type": f"{NAMESPACE}::{t}", "id": i} for t, i in self.parents],
        }


@dataclass(frozen=True)
class PolicyRequest:
    principal: Entity
    action: str
    resource: Entity
    context: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy_ids: tuple[str, ...]
    errors: tuple[str, ...] = ()


class PolicyEngine:
    """A validated, pre-parsed policy set. Immutable: reload builds a new engine."""

    def __init__(self, policy_set: Any, schema: Any, version: str, sources: tuple[str, ...]) -> None:
        self._policy_set = policy_set
        self._schema = schema
        self.version = version
        self.sources = sources

    @classmethod
    def load(cls, extra_dir: Path | None = None) -> PolicyEngine:
        """Shipped default pack plus every ``*.cedar`` in ``extra_dir``; refuses an invalid set whole."""
        files = default_policy_files()
        if extra_dir is not None and extra_dir.is_dir():
            files += [(str(p), p.read_text()) for p in sorted(extra_dir.glob("*.cedar"))]
        return cls.from_sources(files)

    @classmethod
    def from_sources(cls, files: list[tuple[str, str]]) -> PolicyEngine:
        schema_text = shipped_schema()
        text = "\n".join(body for _, body in files)
        if not text.strip():
            # An empty policy set would deny everything silently; say so instead.
            raise PolicyError("the policy set is empty", hint="keep the default pack or add .cedar files")
        for name, body in files:
            try:
                cedarpy.PolicySet.from_str(body)
            except ValueError as exc:
                raise PolicyError(f"{name}: {exc}", hint="fix the Cedar syntax; nothing was loaded") from None
        result = cedarpy.validate_policies(text, schema_text)
        if not result.validation_passed:
            problems = "; ".join(str(e) for e in result.errors)
            raise PolicyError(f"policy set does not match the schema: {problems}", hint="nothing was loaded")
        digest = hashlib.sha256()
        for name, body in files:
            digest.update(name.encode() + b"\0" + body.encode() + b"\0")
        return cls(
            cedarpy.PolicySet.from_str(text),
            cedarpy.Schema.from_str(schema_text),
            digest.hexdigest()[:16],
            tuple(name for name, _ in files),
        )

    def decide(self, request: PolicyRequest, extra_entities: tuple[Entity, ...] = ()) -> Decision:
        entities = [request.principal, request.resource, *extra_entities]
        entities += [Entity("Group", g) for t, g in request.principal.parents if t == "Group"]
        if request.resource.type != "Cluster":
            entities.append(Entity("Cluster", CLUSTER_ID))
        cedar_request = {
            "principal": request.principal.uid(),
            "action": {"type": f"{NAMESPACE}::Action", "id": request.action},
            "resource": request.resource.uid(),
            "context": request.context,
        }
        result = cedarpy.is_authorized(
            cedar_request, self._policy_set, [e.to_cedar() for e in entities], self._schema
        )
        diagnostics = result.diagnostics
        names = diagnostics.id_annotations_by_reason
        ids = tuple(sorted(names.get(r) or r for r in diagnostics.reasons))
        return Decision(result.decision == cedarpy.Decision.Allow, ids, tuple(diagnostics.errors))
