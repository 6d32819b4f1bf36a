"""Why a decision came out as it did, in words an operator and a refused user can act on.

Cedar decides, and Cedar explains: the permits that could have applied to a refused request are asked again
as probes, one Cedar policy per part of their scope and one per top-level condition (each conjunct of a
``when``, each disjunct of an ``unless``), all in one Cedar call on the same entities as the strict
decision. A probe that Cedar satisfies is a condition that held. Only the display of a failed condition reads
values in Python (``runtime_env_facts`` not in the allowed set: ``pip_option:--index-url``), to name the
offending elements; it never decides anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cedarpy

from raywarden.policy import cedartext
from raywarden.policy.explain_values import failure_detail
from raywarden.policy.request import ACTION_TYPE, Decision, Entity, PolicyRequest

if TYPE_CHECKING:
    from raywarden.policy.engine import PolicyEngine

_PROBE_ID = re.compile(r"policy `([^`]+)`")
# At most this many permits are named in a one-line summary; the full explanation lists them all.
_SUMMARY_PERMITS = 3


@dataclass(frozen=True)
class Condition:
    """One top-level condition of a policy: a conjunct of ``when`` or a disjunct of ``unless``."""

    kind: str  # "when" or "unless"
    text: str  # as Cedar text
    outcome: str  # "held", "failed", "error" or "not reached" (after a failed one, as Cedar stops there)
    detail: str = ""  # for a failed one: the offending values, when they can be shown
    error: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "text": self.text,
            "outcome": self.outcome,
            "detail": self.detail,
            "error": self.error,
        }


@dataclass(frozen=True)
class PolicyCheck:
    """A policy as it bears on one request."""

    id: str
    effect: str
    where: str  # file:line
    # "applies", or the part of the scope that does not admit the request: "principal", "resource", "action".
    scope: str = "applies"
    scope_text: str = ""  # the failing part of the scope, as Cedar text
    conditions: tuple[Condition, ...] = ()

    @property
    def failed(self) -> tuple[Condition, ...]:
        return tuple(c for c in self.conditions if c.outcome in ("failed", "error"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "effect": self.effect,
            "where": self.where,
            "scope": self.scope,
            "scope_text": self.scope_text,
            "conditions": [c.as_dict() for c in self.conditions],
        }


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    action: str
    principal: Entity
    resource: Entity
    # The permits that allowed the request, or the forbids that refused it.
    determining: tuple[PolicyCheck, ...] = ()
    # For a refusal that no policy forbade: the permits whose scope admits the request, and their conditions.
    candidates: tuple[PolicyCheck, ...] = ()
    # The permits for this action whose scope does not admit the request.
    out_of_scope: tuple[PolicyCheck, ...] = field(default=())

    def summary(self, *, where: bool = True) -> str:
        """One line for a refusal message and the audit log: action, resource, and what failed. ``where=False``
        leaves out the files policies are written in (the answer to a refused caller names policies by id)."""
        head = f"{self.action} on {self.resource.display()}"
        if self.decision.allowed:
            return f"{head} allowed by {_named(self.determining, where)}"
        if self.determining:
            text = f"{head} refused: forbidden by {_named(self.determining, where)}"
        elif self.candidates:
            parts = [
                f"{c.id} did not apply: {'; '.join(_failure(f) for f in c.failed) or 'its conditions did not hold'}"
                for c in self.candidates
            ]
            text = f"{head} refused: no policy permits it; " + "; ".join(parts[:_SUMMARY_PERMITS])
        elif self.out_of_scope:
            needs = [f"{c.id} needs {c.scope_text}" for c in self.out_of_scope[:_SUMMARY_PERMITS]]
            more = len(self.out_of_scope) - len(needs)
            text = f"{head} refused: no permit for {self.action} admits {self.principal.display()} ({', '.join(needs)}"
            text += f", {more} more)" if more > 0 else ")"
        else:
            text = f"{head} refused: no policy permits {self.action}"
        if self.decision.errors:
            text += f" (evaluation errors: {'; '.join(self.decision.errors)})"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": "allow" if self.decision.allowed else "deny",
            "summary": self.summary(),
            "action": self.action,
            "principal": self.principal.id,
            "resource": f"{self.resource.type}::{self.resource.id}",
            "policy_ids": list(self.decision.policy_ids),
            "errors": list(self.decision.errors),
            "determining": [c.as_dict() for c in self.determining],
            "candidates": [c.as_dict() for c in self.candidates],
            "out_of_scope": [c.as_dict() for c in self.out_of_scope],
        }

    def facts(self) -> list[str]:
        """What failed, one item per failed condition of the permits that could have applied
        (``runtime_env_facts not in allowed_facts: pip_option:--index-url``)."""
        return [_failure(f) for c in self.candidates for f in c.failed]


def _named(checks: tuple[PolicyCheck, ...], where: bool = True) -> str:
    return ", ".join(f"{c.id} ({c.where})" if where else c.id for c in checks)


def _failure(condition: Condition) -> str:
    if condition.detail:
        return condition.detail
    if condition.outcome == "error":
        return f"{condition.text}: {condition.error}"
    return f"unless {condition.text}" if condition.kind == "unless" else f"not {condition.text}"


@dataclass(frozen=True)
class _Permit:
    """One permit of an action's slice and the probes that ask Cedar about its parts."""

    id: str
    number: int
    policy: dict[str, Any]
    parts: tuple[tuple[str, dict[str, Any]], ...]  # (kind, expression) per top-level condition


@dataclass(frozen=True)
class _Probes:
    policy_set: cedarpy.PolicySet
    permits: tuple[_Permit, ...]


class Explainer:
    """Explanations for one engine; the probes of each action are built once, on its first refusal."""

    def __init__(self, engine: PolicyEngine) -> None:
        self._engine = engine
        self._probes: dict[str, _Probes] = {}

    def explain(self, request: PolicyRequest) -> Explanation:
        engine = self._engine
        decision = engine.decide(request, strict=True)
        by_id = {p.id: p for p in engine.policies}
        determining = tuple(PolicyCheck(i, by_id[i].effect, by_id[i].where) for i in decision.policy_ids if i in by_id)
        explanation = Explanation(decision, request.action, request.principal, request.resource, determining)
        if decision.allowed or decision.policy_ids:
            return explanation
        probes = self._probes.get(request.action)
        if probes is None:
            probes = self._probes[request.action] = _build_probes(engine, request.action)
        if not probes.permits:
            return explanation
        cedar_request = {
            "principal": request.principal.uid(),
            "action": {"type": ACTION_TYPE, "id": request.action},
            "resource": request.resource.uid(),
            "context": json.dumps(request.context),
        }
        result = cedarpy.is_authorized(cedar_request, probes.policy_set, engine.strict_entities([request]))
        held = set(result.diagnostics.reasons)
        errors: dict[str, str] = {}
        for message in result.diagnostics.errors:
            found = _PROBE_ID.search(message)
            if found:
                errors.setdefault(found.group(1), message.split(": ", 1)[-1])
        candidates: list[PolicyCheck] = []
        out_of_scope: list[PolicyCheck] = []
        for permit in probes.permits:
            check = _check(engine, permit, request, held, errors, by_id[permit.id].where)
            (candidates if check.scope == "applies" else out_of_scope).append(check)
        return Explanation(
            decision, request.action, request.principal, request.resource, (), tuple(candidates), tuple(out_of_scope)
        )


def _check(
    engine: PolicyEngine,
    permit: _Permit,
    request: PolicyRequest,
    held: set[str],
    errors: dict[str, str],
    where: str,
) -> PolicyCheck:
    probe = f"p{permit.number}"
    if f"{probe}.scope" not in held:
        for part in ("principal", "resource", "action"):
            if f"{probe}.{part}" not in held:
                return PolicyCheck(
                    permit.id, "permit", where, part, cedartext.scope(part, permit.policy.get(part) or {})
                )
        return PolicyCheck(permit.id, "permit", where, "scope")
    conditions = []
    stopped = False
    for number, (kind, expr) in enumerate(permit.parts):
        name = f"{probe}.c{number}"
        text = cedartext.expression(expr)
        if name in errors:
            outcome = "not reached" if stopped else "error"
            conditions.append(Condition(kind, text, outcome, error=errors[name]))
            stopped = True
            continue
        satisfied = name in held
        if satisfied == (kind == "when"):
            conditions.append(Condition(kind, text, "held"))
            continue
        detail = failure_detail(expr, request, engine.cluster) if kind == "when" else ""
        conditions.append(Condition(kind, text, "failed", detail))
        stopped = True
    return PolicyCheck(permit.id, "permit", where, conditions=tuple(conditions))


def _build_probes(engine: PolicyEngine, action: str) -> _Probes:
    everything = {"op": "All"}
    probes: dict[str, dict[str, Any]] = {}
    permits = []
    for number, pid in enumerate(engine.slice_ids(action)):
        policy = engine.policy_json(pid)
        if policy.get("effect") != "permit":
            continue
        scope = {"effect": "permit", **{k: policy.get(k, everything) for k in ("principal", "action", "resource")}}
        probe = f"p{number}"
        probes[f"{probe}.scope"] = {**scope, "conditions": []}
        for part in ("principal", "action", "resource"):
            alone = {"effect": "permit", "principal": everything, "action": everything, "resource": everything}
            probes[f"{probe}.{part}"] = {**alone, part: scope[part], "conditions": []}
        parts = tuple(_top_level(policy.get("conditions") or []))
        for index, (_, expr) in enumerate(parts):
            probes[f"{probe}.c{index}"] = {**scope, "conditions": [{"kind": "when", "body": expr}]}
        permits.append(_Permit(pid, number, policy, parts))
    text = json.dumps({"staticPolicies": probes, "templates": {}, "templateLinks": []})
    return _Probes(cedarpy.PolicySet.from_json_str(text), tuple(permits))


def _top_level(conditions: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Each conjunct of every ``when`` and each disjunct of every ``unless``, in the order Cedar evaluates them."""
    found: list[tuple[str, dict[str, Any]]] = []
    for condition in conditions:
        kind = str(condition.get("kind"))
        joiner = "&&" if kind == "when" else "||"
        found += [(kind, part) for part in _split(condition.get("body") or {}, joiner)]
    return found


def _split(expr: dict[str, Any], joiner: str) -> list[dict[str, Any]]:
    inner = expr.get(joiner) if len(expr) == 1 else None
    if isinstance(inner, dict) and "left" in inner and "right" in inner:
        return _split(inner["left"], joiner) + _split(inner["right"], joiner)
    return [expr]
