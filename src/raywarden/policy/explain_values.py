"""The offending values of a condition Cedar found false, for display.

Cedar has already said the condition is false (raywarden.policy.explain); this only reads the values its
operands name (attributes of the request's entities and of the cluster, literals) to say what to change:
``runtime_env_facts not in allowed_facts: pip_option:--index-url``, ``entrypoint_milli_cpus 8000 > 4000``.
Any operand it cannot read plainly gives no detail rather than a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from raywarden.errors import RaywardenError
from raywarden.policy.cedartext import expression
from raywarden.policy.request import NAMESPACE, Entity, PolicyRequest

_NEGATED = {"<=": ">", "<": ">=", ">=": "<", ">": "<=", "==": "!=", "!=": "=="}


class _Unknown(RaywardenError):
    """Internal: a form this module does not handle; the caller falls back."""


@dataclass(frozen=True)
class _Ref:
    type: str
    id: str


def failure_detail(expr: dict[str, Any], request: PolicyRequest, cluster: Entity) -> str:
    """What made the ``when`` conjunct ``expr`` false, or "" when that cannot be shown plainly."""
    try:
        return _Values(request, cluster).detail(expr)
    except (_Unknown, KeyError, TypeError, ValueError, AttributeError):
        return ""


class _Values:
    def __init__(self, request: PolicyRequest, cluster: Entity) -> None:
        self._request = request
        self._attrs: dict[_Ref, dict[str, Any]] = {}
        # The engine's cluster last: a resource naming the cluster is decided with the engine's.
        for entity in (request.principal, request.resource, cluster):
            self._attrs[_Ref(f"{NAMESPACE}::{entity.type}", entity.id)] = entity.attrs

    def detail(self, expr: dict[str, Any]) -> str:
        ((op, inner),) = expr.items()
        if op == "containsAll":
            outside = self._elements(inner["right"]) - self._elements(inner["left"])
            return f"{_name(inner['right'])} not in {_name(inner['left'])}: {_listed(outside)}" if outside else ""
        if op == "!" and set(inner["arg"]) == {"containsAny"}:
            both = inner["arg"]["containsAny"]
            common = self._elements(both["left"]) & self._elements(both["right"])
            return f"{_name(both['left'])} in {_name(both['right'])}: {_listed(common)}" if common else ""
        if op == "contains":
            return f"{_show(self.value(inner['right']))} not in {_name(inner['left'])}"
        if op in _NEGATED:
            left, right = self.value(inner["left"]), self.value(inner["right"])
            return f"{_name(inner['left'])} {_show(left)} {_NEGATED[op]} {_show(right)}"
        if op == "has":
            return f"{_name(inner['left'])} has no {inner['attr']}"
        if op == "if-then-else":  # the branch Cedar took is the condition that failed
            taken = self.value(inner["if"])
            if not isinstance(taken, bool):
                raise _Unknown(op)
            return self.detail(inner["then"] if taken else inner["else"])
        if op == "isEmpty":
            return f"{_name(inner['arg'])} is not empty: {_listed(self._elements(inner['arg']))}"
        return ""

    def value(self, expr: dict[str, Any]) -> Any:
        ((op, inner),) = expr.items()
        if op == "Value":
            ref = inner.get("__entity") if isinstance(inner, dict) else None
            return _Ref(ref["type"], ref["id"]) if isinstance(ref, dict) else inner
        if op == "Var" and inner in ("principal", "resource"):
            entity: Entity = getattr(self._request, inner)
            return _Ref(f"{NAMESPACE}::{entity.type}", entity.id)
        if op == "Var" and inner == "context":
            return self._request.context
        if op in (".", "has"):
            base = self.value(inner["left"])
            attrs = self._attrs[base] if isinstance(base, _Ref) else base
            if not isinstance(attrs, dict):
                raise _Unknown(op)
            return attrs[inner["attr"]] if op == "." else inner["attr"] in attrs
        if op == "Set":
            return [self.value(e) for e in inner]
        if op == "if-then-else":
            condition = self.value(inner["if"])
            if not isinstance(condition, bool):
                raise _Unknown(op)
            return self.value(inner["then"] if condition else inner["else"])
        raise _Unknown(op)

    def _elements(self, expr: dict[str, Any]) -> set[str]:
        found = self.value(expr)
        if not isinstance(found, list):
            raise _Unknown("not a set")
        return {item if isinstance(item, str) else _show(item) for item in found}


def _name(expr: dict[str, Any]) -> str:
    """How a condition's operand is named in a detail: its attribute, else its Cedar text."""
    ((op, inner),) = expr.items()
    if op in (".", "has"):
        return str(inner["attr"])
    if op == "if-then-else":
        return _name(inner["then"])
    return expression(expr)


def _show(value: Any) -> str:
    if isinstance(value, _Ref):
        return f"{value.type}::{json.dumps(value.id, ensure_ascii=False)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _listed(items: set[str]) -> str:
    return ", ".join(sorted(items))
