"""What a policy decision is asked about (principal, action, resource, context) and what it answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "Raywarden"
CLUSTER_ID = "ray"
ACTION_TYPE = f"{NAMESPACE}::Action"


@dataclass(frozen=True)
class Entity:
    type: str  # without namespace, e.g. "Job"
    id: str
    attrs: dict[str, Any] = field(default_factory=dict)
    parents: tuple[tuple[str, str], ...] = ()

    def uid(self) -> dict[str, str]:
        return {"type": f"{NAMESPACE}::{self.type}", "id": self.id}

    def to_cedar(self, names: frozenset[str] | None = None) -> dict[str, Any]:
        """The entity in Cedar's JSON entity format; with ``names``, only the attributes named there."""
        attrs = self.attrs if names is None else {k: v for k, v in self.attrs.items() if k in names}
        return {
            "uid": self.uid(),
            "attrs": attrs,
            "parents": [{"type": f"{NAMESPACE}::{t}", "id": i} for t, i in self.parents],
        }

    def display(self) -> str:
        """``Job "raysubmit_1"``: how explanations and refusals name an entity."""
        return f"{self.type} {_quoted(self.id)}"


@dataclass(frozen=True)
class PolicyRequest:
    principal: Entity
    action: str
    resource: Entity
    context: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # The policies that determined the decision: the permits that allowed it, or the forbids that denied
    # it. Empty for a denial means that no policy permits the request.
    policy_ids: tuple[str, ...]
    errors: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        if self.allowed:
            return "permitted by " + ", ".join(self.policy_ids)
        text = "forbidden by " + ", ".join(self.policy_ids) if self.policy_ids else "no policy permits this"
        if self.errors:
            text += f" (evaluation errors: {'; '.join(self.errors)})"
        return text


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
