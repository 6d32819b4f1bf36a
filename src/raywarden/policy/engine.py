"""Load, validate and evaluate the Cedar policy set. Anything but an explicit permit is a denial.

Every policy is known by its ``@id`` annotation (or ``FILE#N`` without one), so a decision names the
policies that made it. The set is validated against the shipped schema when it is loaded; decisions then
skip per-request schema checks, which cost more than the evaluation itself (bench/policy_bench.py), and the
entity builders in raywarden.policy.entities are tested against the schema instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from raywarden.errors import PolicyError
from raywarden.state import StateDir

NAMESPACE = "Raywarden"
CLUSTER_ID = "ray"
_ACTION_TYPE = f"{NAMESPACE}::Action"


def _shipped_text(name: str) -> str:
    return resources.files("raywarden.policy").joinpath(name).read_text()


def shipped_schema() -> str:
    return _shipped_text("schema.cedarschema")


def schema_actions(schema_text: str | None = None) -> frozenset[str]:
    """Every action the schema declares (``action "a", "b" appliesTo ...``)."""
    text = re.sub(r"//[^\n]*", "", schema_text if schema_text is not None else shipped_schema())
    found: set[str] = set()
    for names in re.findall(r"\baction\s+((?:\"[^\"]+\"\s*,?\s*)+)", text):
        found.update(re.findall(r"\"([^\"]+)\"", names))
    return frozenset(found)


def default_policy_files() -> list[tuple[str, str]]:
    folder = resources.files("raywarden.policy").joinpath("default")
    return sorted(
        (f"default/{entry.name}", entry.read_text()) for entry in folder.iterdir() if entry.name.endswith(".cedar")
    )


def policy_files(extra_dir: Path | None) -> list[tuple[str, str]]:
    """The shipped default pack, then every ``*.cedar`` in ``extra_dir`` (sorted by name)."""
    files = default_policy_files()
    if extra_dir is not None and extra_dir.is_dir():
        files += [(str(p), p.read_text()) for p in sorted(extra_dir.glob("*.cedar"))]
    return files


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


@dataclass(frozen=True)
class PolicyInfo:
    id: str
    source: str
    effect: str


def _parse_file(name: str, body: str, schema_text: str) -> dict[str, Any]:
    """One file's policies as Cedar JSON, refusing syntax errors, templates and schema mismatches."""
    try:
        parsed: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(body))
    except ValueError as exc:
        raise PolicyError(f"{name}: {exc}", hint="fix the Cedar syntax; nothing was loaded") from None
    if parsed.get("templates"):
        raise PolicyError(f"{name}: policy templates are not supported", hint="write static policies")
    if parsed.get("staticPolicies"):
        result = cedarpy.validate_policies(body, schema_text)
        if not result.validation_passed:
            problems = "; ".join(str(e) for e in result.errors)
            raise PolicyError(f"{name}: does not match the schema: {problems}",
                              hint="see docs/policy.md for entity attributes and actions; nothing was loaded")
    return parsed


@dataclass(frozen=True)
class _References:
    """Attribute names the policies read, and whether they use ``context`` other than attribute by attribute."""

    names: frozenset[str]
    whole_context: bool


def _references(policies: list[dict[str, Any]]) -> _References:
    names: set[str] = set()
    context_uses = 0
    context_reads = 0

    def walk(node: Any) -> None:
        nonlocal context_uses, context_reads
        if isinstance(node, dict):
            for op in (".", "has"):
                inner = node.get(op)
                if isinstance(inner, dict) and isinstance(inner.get("attr"), str):
                    names.add(inner["attr"])
                    if inner.get("left") == {"Var": "context"}:
                        context_reads += 1
            if node.get("Var") == "context":
                context_uses += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(policies)
    return _References(frozenset(names), context_uses != context_reads)


def _pruned(entity: Entity, names: frozenset[str]) -> dict[str, Any]:
    """The entity with only the attributes some policy reads, at every depth of nested records.

    Cedar has no dynamic attribute access, so a field no policy names cannot change a decision; leaving it
    out saves Cedar parsing it (the runtime_env record of a submission is the costly one).
    """
    cedar = entity.to_cedar()
    cedar["attrs"] = {k: _prune_value(v, names) for k, v in entity.attrs.items() if k in names}
    return cedar


def _prune_value(value: Any, names: frozenset[str]) -> Any:
    if isinstance(value, dict) and "__entity" not in value and "__extn" not in value:
        return {k: _prune_value(v, names) for k, v in value.items() if k in names}
    return value


class PolicyEngine:
    """A validated, pre-parsed policy set. Immutable: reload builds a new engine."""

    def __init__(self, policy_set: Any, schema: Any, version: str, sources: tuple[str, ...],
                 policies: tuple[PolicyInfo, ...], base_entities: Any, references: _References) -> None:
        self._policy_set = policy_set
        self._schema = schema
        self._base = base_entities
        self._refs = references
        # Base entities plus one principal, parsed once per principal (a gateway serves few principals).
        self._principal_bases: dict[str, Any] = {}
        self.version = version
        self.sources = sources
        self.policies = policies

    @classmethod
    def load(cls, extra_dir: Path | None = None, cluster: Entity | None = None) -> PolicyEngine:
        """Shipped default pack plus every ``*.cedar`` in ``extra_dir``; refuses an invalid set whole."""
        return cls.from_sources(policy_files(extra_dir), cluster)

    @classmethod
    def for_state(cls, state: StateDir) -> PolicyEngine:
        """The set a cluster's gateway runs: default pack, the state dir's policies, its config's limits."""
        from raywarden.policy.entities import cluster_entity

        return cls.load(state.policy_dir, cluster_entity(state.load_config()))

    @classmethod
    def from_sources(cls, files: list[tuple[str, str]], cluster: Entity | None = None) -> PolicyEngine:
        from raywarden.policy.entities import cluster_entity

        schema_text = shipped_schema()
        if not "".join(body for _, body in files).strip():
            # An empty policy set would deny everything silently; say so instead.
            raise PolicyError("the policy set is empty", hint="keep the default pack or add .cedar files")
        combined: dict[str, Any] = {}
        infos: list[PolicyInfo] = []
        for name, body in files:
            parsed = _parse_file(name, body, schema_text)
            for index, policy in enumerate(parsed.get("staticPolicies", {}).values()):
                pid = str((policy.get("annotations") or {}).get("id") or f"{name}#{index}")
                if pid in combined:
                    where = next(i.source for i in infos if i.id == pid)
                    raise PolicyError(f"{name}: policy id {pid!r} is already used in {where}",
                                      hint="every @id must be unique: decisions are explained by it")
                combined[pid] = policy
                infos.append(PolicyInfo(pid, name, str(policy.get("effect"))))
        if not combined:
            raise PolicyError("the policy set has no policies", hint="keep the default pack or add .cedar files")
        cluster = cluster or cluster_entity(None)
        schema = cedarpy.Schema.from_str(schema_text)
        try:
            base = cedarpy.Entities.from_json_str(json.dumps([cluster.to_cedar()]), schema)
        except ValueError as exc:
            raise PolicyError(f"cluster limits do not match the schema: {exc}", hint="check config.json") from None
        digest = hashlib.sha256()
        for name, body in files:
            digest.update(name.encode() + b"\0" + body.encode() + b"\0")
        # The limits take part in decisions, so they take part in the version too.
        digest.update(json.dumps(cluster.to_cedar(), sort_keys=True).encode())
        policy_set = cedarpy.PolicySet.from_json_str(
            json.dumps({"staticPolicies": combined, "templates": {}, "templateLinks": []})
        )
        return cls(policy_set, schema, digest.hexdigest()[:16], tuple(n for n, _ in files), tuple(infos), base,
                   _references(list(combined.values())))

    def _principal_base(self, principal_json: str) -> Any:
        found = self._principal_bases.get(principal_json)
        if found is None:
            if len(self._principal_bases) >= 4096:
                self._principal_bases.clear()
            found = self._principal_bases[principal_json] = self._base.with_added_json_str(principal_json)
        return found

    def decide(self, request: PolicyRequest, extra_entities: tuple[Entity, ...] = (), *,
               strict: bool = False) -> Decision:
        """One decision. ``strict`` also checks the request and entities against the schema (tests, explain)."""
        return self.decide_many([request], extra_entities, strict=strict)[0]

    def decide_many(self, requests: Sequence[PolicyRequest], extra_entities: tuple[Entity, ...] = (), *,
                    strict: bool = False) -> list[Decision]:
        """Several decisions over one entity set (a job list: one request per job, one Cedar call)."""
        if not requests:
            return []
        seen: dict[tuple[str, str], Entity] = {}
        for entity in (*(e for r in requests for e in (r.principal, r.resource)), *extra_entities):
            if entity.type != "Cluster":  # the cluster, with its limits, is in the base set already
                seen.setdefault((entity.type, entity.id), entity)
        # Cedar parses every attribute it is given, at a cost per value comparable to evaluating a policy.
        # An attribute no policy reads cannot change a decision, so the fast path leaves it out; strict
        # decisions (tests, `policy explain`) keep everything and check it against the schema.
        names = None if strict else self._refs.names
        cedar_requests = [
            {
                "principal": r.principal.uid(),
                "action": {"type": _ACTION_TYPE, "id": r.action},
                "resource": r.resource.uid(),
                "context": json.dumps(r.context if names is None or self._refs.whole_context
                                      else {k: v for k, v in r.context.items() if k in names}),
            }
            for r in requests
        ]
        base = self._base
        principals = {(r.principal.type, r.principal.id) for r in requests}
        if names is not None and len(principals) == 1:
            principal = seen.pop(next(iter(principals)))
            base = self._principal_base(json.dumps([_pruned(principal, names)]))
        delta = json.dumps([e.to_cedar() if names is None else _pruned(e, names) for e in seen.values()])
        try:
            entities = base.with_added_json_str(delta, self._schema if strict else None)
        except ValueError as exc:
            if strict:
                raise PolicyError(f"entities do not match the schema: {exc}") from None
            return [Decision(False, (), (f"bad entities: {exc}",)) for _ in requests]
        results = cedarpy.is_authorized_batch(cedar_requests, self._policy_set, entities,
                                              self._schema if strict else None)
        decisions = []
        for result in results:
            diagnostics = result.diagnostics
            if strict and result.decision == cedarpy.Decision.NoDecision:
                raise PolicyError(f"request does not match the schema: {'; '.join(diagnostics.errors)}")
            decisions.append(Decision(result.decision == cedarpy.Decision.Allow,
                                      tuple(sorted(diagnostics.reasons)), tuple(diagnostics.errors)))
        return decisions
