"""Load, validate and evaluate the Cedar policy set. Anything but an explicit permit is a denial.

Every policy is known by its ``@id`` annotation (or ``FILE#N`` without one), so a decision names the
policies that made it. The set is validated against the shipped schema when it is loaded; decisions then
skip per-request schema checks, and the entity builders in raywarden.policy.entities are tested against the
schema instead.

The gateway's path (``decide``) evaluates the policies compiled to Python (raywarden.policy.compiled), which
hands anything it does not evaluate exactly as Cedar does to Cedar. Cedar, through cedarpy, charges a few
microseconds for every value it parses and one or two for every policy it evaluates, so when it decides it
gets as little as cannot change the decision: only the policies whose scope admits the action (a slice per
action, made at load time, which the compiled path uses too), only the attributes and context fields those
policies read, and the principal parsed once per identity. The strict path uses Cedar with the whole set and
every attribute; tests check that all of them decide alike (docs/policy.md, "Speed").
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import cedarpy

from raywarden.errors import PolicyError
from raywarden.policy.compiled import CompiledSet, Env, Fn, Node, Undecided, Unsupported, compile_policy, text
from raywarden.state import StateDir

NAMESPACE = "Raywarden"
CLUSTER_ID = "ray"
_ACTION_TYPE = f"{NAMESPACE}::Action"
# Compact JSON for Cedar: nothing reads it but Cedar, and every byte is parsed on every decision.
_encode = json.JSONEncoder(check_circular=False, separators=(",", ":")).encode
# cedarpy's own extension functions: its public wrappers copy each request and re-wrap each result, a
# sizeable share of a decision that must take well under 100 us. The strict path keeps the public API, and
# tests/unit/policy/test_engine.py checks that both decide alike.
_native: Any = getattr(cedarpy, "_internal", None)
_native_is_authorized: Any = getattr(_native, "is_authorized", None)


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
            raise PolicyError(
                f"{name}: does not match the schema: {problems}",
                hint="see docs/policy.md for entity attributes and actions; nothing was loaded",
            )
    return parsed


@dataclass(frozen=True)
class _References:
    """Attribute names the policies read, and whether they use ``context`` other than attribute by attribute."""

    names: frozenset[str]
    whole_context: bool
    # The context fields the policies read (``context.x``, ``context has x``), in a fixed order.
    context_names: tuple[str, ...] = ()


def _references(policies: list[dict[str, Any]]) -> _References:
    names: set[str] = set()
    context_names: set[str] = set()
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
                        context_names.add(inner["attr"])
            if node.get("Var") == "context":
                context_uses += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(policies)
    return _References(frozenset(names), context_uses != context_reads, tuple(sorted(context_names)))


def _pruned(entity: Entity, names: frozenset[str]) -> dict[str, Any]:
    """The entity with only the attributes some policy reads.

    Cedar has no dynamic attribute access, so an attribute no policy names cannot change a decision; leaving
    it out saves Cedar parsing it. Only whole attributes go: a record inside one may be compared whole
    (``resource.runtime_env == {...}``), so its fields all stay.
    """
    cedar = entity.to_cedar()
    cedar["attrs"] = {k: v for k, v in entity.attrs.items() if k in names}
    return cedar


_type_names: dict[str, str] = {}
_parents_uids: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}


def _type_name(entity_type: str) -> str:
    """``Job`` -> ``Raywarden::Job``, kept: a handful of types, on every decision."""
    found = _type_names.get(entity_type)
    if found is None:
        found = _type_names[entity_type] = f"{NAMESPACE}::{entity_type}"
    return found


def _parent_uids(entity: Entity) -> tuple[tuple[str, str], ...]:
    found = _parents_uids.get(entity.parents)
    if found is None:  # a handful of distinct values: (), in the cluster, a principal's groups
        found = tuple((_type_name(t), text(i)) for t, i in entity.parents)
        if len(_parents_uids) < 4096:
            _parents_uids[entity.parents] = found
    return found


_parents_json: dict[tuple[tuple[str, str], ...], str] = {}
_json_string: Callable[[str], str] = encode_basestring_ascii


def _entity_json(entity: Entity, names: frozenset[str]) -> str:
    """``[entity]`` as Cedar JSON with only the attributes in ``names`` (``_pruned``), for the per-decision path."""
    parents = _parents_json.get(entity.parents)
    if parents is None:  # a handful of distinct values: (), in the cluster, a principal's groups
        parents = _encode([{"type": f"{NAMESPACE}::{t}", "id": i} for t, i in entity.parents])
        if len(_parents_json) < 4096:
            _parents_json[entity.parents] = parents
    attrs = {k: v for k, v in entity.attrs.items() if k in names}
    # Strings escaped as the encoder escapes them, without its set-up cost for a two-key object.
    return (
        f'[{{"uid":{{"type":{_json_string(f"{NAMESPACE}::{entity.type}")},"id":{_json_string(entity.id)}}},'
        f'"attrs":{_encode(attrs)},"parents":{parents}}}]'
    )


_decoder = json.JSONDecoder()
_ANSWER_HEAD = '{"decision":'
_DIAGNOSTICS = ',"diagnostics":'


def _decision(raw: str) -> Decision:
    """A Decision from cedarpy's JSON answer (``{"decision": ..., "diagnostics": {"reason": [...], ...}}``).

    The answer ends with as much text again of timing metrics nobody reads: only the decision and the
    diagnostics are parsed, each where it starts (``decision`` is the first key in every answer and
    ``diagnostics`` the first to follow it), falling back to parsing everything if that ever changes.
    """
    at = raw.find(_DIAGNOSTICS) if raw.startswith(_ANSWER_HEAD) else -1
    try:
        if at < 0:
            raise ValueError("unexpected layout")
        verdict = _decoder.raw_decode(raw, len(_ANSWER_HEAD))[0]
        diagnostics = _decoder.raw_decode(raw, at + len(_DIAGNOSTICS))[0]
    except ValueError:
        answer = json.loads(raw)
        verdict, diagnostics = answer.get("decision"), answer.get("diagnostics")
    if not isinstance(diagnostics, dict):
        diagnostics = {}
    return Decision(
        verdict == "Allow", tuple(sorted(diagnostics.get("reason") or ())), tuple(diagnostics.get("errors") or ())
    )


@dataclass(frozen=True)
class _Slice:
    """The policies that can apply to one action, and what they read: all a decision on that action needs."""

    policy_set: Any
    refs: _References
    # The same policies compiled to Python (raywarden.policy.compiled), or None when one of them uses Cedar
    # that module does not evaluate.
    compiled: CompiledSet | None = None
    # The cluster entity with only the attributes these policies read (native handle), and its text, which
    # names it in the principal cache: Cedar copies every entity of the base set each time it adds one (the
    # resource, on every decision), at a cost that grows with their attributes.
    base: Any = None
    base_json: str = ""


def _action_scope(policy: dict[str, Any]) -> frozenset[str] | None:
    """The actions a policy's scope admits (``action == A``, ``action in [A, B]``), or None for any action.

    The schema declares no action groups (tests/unit/policy/test_schema.py checks it), so ``action in A`` admits
    A alone. Anything this does not recognise admits every action, which is always safe.
    """
    scope = policy.get("action")
    if not isinstance(scope, dict) or scope.get("op") not in ("==", "in"):
        return None
    listed = scope.get("entities") if "entities" in scope else [scope.get("entity")]
    ids: set[str] = set()
    for entity in listed if isinstance(listed, list) else [None]:
        entity = entity.get("__entity", entity) if isinstance(entity, dict) else None
        if not isinstance(entity, dict) or entity.get("type") != _ACTION_TYPE or not isinstance(entity.get("id"), str):
            return None
        ids.add(entity["id"])
    return frozenset(ids)


def _compiled(tests: dict[str, tuple[str, Fn] | None], pids: list[str]) -> CompiledSet | None:
    """The policies ``pids`` as one compiled set, or None if any of them did not compile."""
    chosen = [(pid, *test) for pid in pids if (test := tests[pid]) is not None]
    return CompiledSet(chosen) if len(chosen) == len(pids) else None


def _cluster_node(cluster: Entity) -> tuple[tuple[str, str], Node] | None:
    """The cluster as the compiled path reads it, or None if it cannot read the limits exactly as Cedar does.
    The node is shared by every decision, so it must have no parents (the schema gives the cluster none): its
    ancestors would depend on each decision's store."""
    if cluster.parents:
        return None
    try:
        return (_type_name(cluster.type), cluster.id), Node(cluster.attrs, _parent_uids(cluster))
    except Undecided:
        return None


def _compile_each(
    combined: dict[str, Any], scoped: bool, cluster: tuple[tuple[str, str], Node] | None
) -> dict[str, tuple[str, Fn] | None]:
    """Each policy's effect and test (with its action scope, or without when ``scoped`` is False), or None."""
    tests: dict[str, tuple[str, Fn] | None] = dict.fromkeys(combined)
    if cluster is None:  # no compiled view of the cluster: Cedar decides everything
        return tests
    fixed = dict([cluster])
    for pid, policy in combined.items():
        try:
            tests[pid] = (
                str(policy.get("effect")),
                compile_policy(policy if scoped else {**policy, "action": {"op": "All"}}, fixed),
            )
        except (Unsupported, Undecided, KeyError, TypeError, ValueError):  # anything unexpected: Cedar decides
            tests[pid] = None
    return tests


def _slices(
    combined: dict[str, Any], cluster: Entity, cluster_node: tuple[tuple[str, str], Node] | None
) -> dict[str, _Slice]:
    """One policy set per action of the schema, holding only the policies whose scope admits that action.

    A policy whose action scope does not match is never satisfied and never evaluates its conditions (Cedar
    checks the scope first), so leaving it out changes neither the decision nor its reasons or errors. Cedar
    evaluates every policy it is given, at about 1.5 us each; a decision on jobs.read needs 3 of the pack's 12.
    """
    scopes = {pid: _action_scope(policy) for pid, policy in combined.items()}
    tests = _compile_each(combined, False, cluster_node)
    slices = {}
    bases: dict[str, Any] = {}
    for action in sorted(schema_actions()):
        # Within the slice the request's action is always one the scope admits, so the scope itself is true
        # and goes: Cedar would otherwise build the set of `action in [...]` on every evaluation.
        chosen = {
            pid: {**policy, "action": {"op": "All"}}
            for pid, policy in combined.items()
            if (scope := scopes[pid]) is None or action in scope
        }
        policy_set = cedarpy.PolicySet.from_json_str(
            json.dumps({"staticPolicies": chosen, "templates": {}, "templateLinks": []})
        )
        refs = _references(list(chosen.values()))
        base_json = _entity_json(cluster, refs.names)
        if base_json not in bases:  # a few distinct ones: most actions read nothing of the cluster
            bases[base_json] = cedarpy.Entities.from_json_str(base_json)._inner
        slices[action] = _Slice(policy_set, refs, _compiled(tests, list(chosen)), bases[base_json], base_json)
    return slices


class PolicyEngine:
    """A validated, pre-parsed policy set. Immutable: reload builds a new engine."""

    def __init__(
        self,
        policy_set: Any,
        schema: Any,
        version: str,
        sources: tuple[str, ...],
        policies: tuple[PolicyInfo, ...],
        base_entities: Any,
        references: _References,
        slices: dict[str, _Slice] | None = None,
        cluster: tuple[tuple[str, str], Node] | None = None,
        compiled: CompiledSet | None = None,
    ) -> None:
        self._policy_set = policy_set
        self._schema = schema
        self._base = base_entities
        self._refs = references
        # For actions without a slice of their own: every policy, the whole cluster.
        self._full = _Slice(policy_set, references, compiled, base_entities._inner, "")
        self._slices = slices or {}
        # The cluster as the compiled path reads it (its converted attributes are kept from one decision to
        # the next, and folded into the compiled policies), or None: then every decision goes to Cedar.
        self._cluster = cluster
        # Decisions the compiled path left to Cedar (an evaluation error, or values it does not compare).
        self.decided_by_cedar = 0
        # Base entities plus one principal, parsed once per principal (a gateway serves few principals).
        self._principal_bases: dict[str, Any] = {}
        # The same for decide(), keyed on the principal's fields: (native base with the principal, its uid).
        self._principals: dict[tuple[Any, ...], tuple[Any, dict[str, str]]] = {}
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
    def from_sources(
        cls, files: list[tuple[str, str]], cluster: Entity | None = None, *, compiled: bool = True
    ) -> PolicyEngine:
        """``compiled=False``: every decision through Cedar (cedarpy), as bench/policy_bench.py compares."""
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
                    raise PolicyError(
                        f"{name}: policy id {pid!r} is already used in {where}",
                        hint="every @id must be unique: decisions are explained by it",
                    )
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
        node = _cluster_node(cluster) if compiled else None
        return cls(
            policy_set,
            schema,
            digest.hexdigest()[:16],
            tuple(n for n, _ in files),
            tuple(infos),
            base,
            _references(list(combined.values())),
            _slices(combined, cluster, node),
            node,
            _compiled(_compile_each(combined, True, node), list(combined)),
        )

    def _principal_base(self, principal_json: str) -> Any:
        found = self._principal_bases.get(principal_json)
        if found is None:
            if len(self._principal_bases) >= 4096:
                self._principal_bases.clear()
            found = self._principal_bases[principal_json] = self._base.with_added_json_str(principal_json)
        return found

    def decide(
        self, request: PolicyRequest, extra_entities: tuple[Entity, ...] = (), *, strict: bool = False
    ) -> Decision:
        """One decision. ``strict`` also checks the request and entities against the schema (tests, explain)."""
        principal, resource = request.principal, request.resource
        if (
            strict
            or extra_entities
            or _native_is_authorized is None
            or (resource.type == principal.type and resource.id == principal.id)
        ):
            return self.decide_many([request], extra_entities, strict=strict)[0]
        part = self._slices.get(request.action, self._full)
        if part.compiled is not None and self._cluster is not None:
            try:
                return Decision(*part.compiled.decide(self._env(request, part.refs)))
            except Undecided:  # Cedar decides anything with an error, and gives its own messages
                self.decided_by_cedar += 1
        # Cedar's path: the decision of decide_many, with as little Python and JSON as possible. Only the
        # principal is cached (per identity, never per request); the resource and the context are built and
        # parsed afresh for every decision, with only the attributes the action's policies read.
        names = part.refs.names
        base, principal_uid = self._principal_entry(principal, part)
        if resource.type == "Cluster":  # the cluster, with its limits, is in the base set already
            entities = base
        else:
            try:
                entities = base.with_added_json_str(_entity_json(resource, names))
            except ValueError as exc:
                return Decision(False, (), (f"bad entities: {exc}",))
        cedar_request: dict[str, Any] = {
            "principal": principal_uid,
            "action": {"type": _ACTION_TYPE, "id": request.action},
            "resource": {"type": f"{NAMESPACE}::{resource.type}", "id": resource.id},
        }
        context = request.context
        if not part.refs.whole_context:
            context = {k: context[k] for k in part.refs.context_names if k in context}
        if context:  # no context at all is Cedar's empty context, and cheaper to say
            cedar_request["context"] = _encode(context)
        return _decision(_native_is_authorized(cedar_request, part.policy_set, entities))

    def _env(self, request: PolicyRequest, refs: _References) -> Env:
        """What the compiled path reads: the request's uids, its context and its three entities, given the
        same attributes and context fields as Cedar's path (``refs``)."""
        if self._cluster is None:
            raise Undecided("no compiled view of the cluster")
        cluster_uid, cluster_node = self._cluster
        principal, resource = request.principal, request.resource
        principal_uid = (_type_name(principal.type), text(principal.id))
        resource_uid = (_type_name(resource.type), text(resource.id))
        store = {cluster_uid: cluster_node}
        if principal_uid in store or principal_uid == resource_uid:
            raise Undecided("the principal is the cluster or the resource")
        # The principal's attributes that Cedar's path gives it: those any policy of the set reads.
        store[principal_uid] = Node(principal.attrs, _parent_uids(principal), self._refs.names)
        if resource.type != "Cluster":  # the cluster, with its limits, is the engine's, as on Cedar's path
            store[resource_uid] = Node(resource.attrs, _parent_uids(resource), refs.names)
        return Env(
            principal_uid,
            (_ACTION_TYPE, request.action),
            resource_uid,
            request.context,
            store,
            None if refs.whole_context else refs.context_names,
        )

    def _principal_entry(self, principal: Entity, part: _Slice) -> tuple[Any, dict[str, str]]:
        """The slice's base set with ``principal`` added (native handle), and its uid; parsed once per principal
        (and per distinct base: a few per policy set)."""
        key: tuple[Any, ...] | None = (
            part.base_json,
            principal.type,
            principal.id,
            principal.parents,
            tuple(principal.attrs.items()),
        )
        try:
            found = self._principals.get(key) if key is not None else None  # hashing checks every value
        except TypeError:  # an unhashable attribute value: not a principal the gateway builds
            key, found = None, None
        if found is None:
            found = (part.base.with_added_json_str(_entity_json(principal, self._refs.names)), principal.uid())
            if key is not None:
                if len(self._principals) >= 4096:
                    self._principals.clear()
                self._principals[key] = found
        return found

    def decide_many(
        self, requests: Sequence[PolicyRequest], extra_entities: tuple[Entity, ...] = (), *, strict: bool = False
    ) -> list[Decision]:
        """Several decisions over one entity set (a job list: one request per job, one Cedar call)."""
        if not requests:
            return []
        seen: dict[tuple[str, str], Entity] = {}
        for entity in (*(e for r in requests for e in (r.principal, r.resource)), *extra_entities):
            if entity.type != "Cluster":  # the cluster, with its limits, is in the base set already
                if seen.setdefault((entity.type, entity.id), entity) != entity:
                    # Two entities with one uid (a submission id chosen equal to another job's id): one entity
                    # set would decide both with the first one's attributes, so each is decided on its own.
                    if len(requests) > 1:
                        return [self.decide(r, extra_entities, strict=strict) for r in requests]
                    problem = f"two different entities are both {entity.type}::{entity.id!r}"
                    if strict:
                        raise PolicyError(f"entities do not match: {problem}")
                    return [Decision(False, (), (f"bad entities: {problem}",))]
        # Cedar parses every attribute it is given, at a cost per value comparable to evaluating a policy.
        # An attribute no policy reads cannot change a decision, so the fast path leaves it out, and asks only
        # the policies that can apply when every request has the same action; strict decisions (tests,
        # `policy explain`) use every policy, keep every attribute and check them against the schema.
        actions = {r.action for r in requests}
        part = self._full if strict or len(actions) != 1 else self._slices.get(actions.pop(), self._full)
        if not strict and not extra_entities and part.compiled is not None and self._cluster is not None:
            try:
                return [Decision(*part.compiled.decide(self._env(r, part.refs))) for r in requests]
            except Undecided:
                self.decided_by_cedar += 1
        names = None if strict else part.refs.names
        cedar_requests = [
            {
                "principal": r.principal.uid(),
                "action": {"type": _ACTION_TYPE, "id": r.action},
                "resource": r.resource.uid(),
                "context": json.dumps(
                    r.context
                    if names is None or part.refs.whole_context
                    else {k: r.context[k] for k in part.refs.context_names if k in r.context}
                ),
            }
            for r in requests
        ]
        base = self._base
        principals = {(r.principal.type, r.principal.id) for r in requests}
        if names is not None and len(principals) == 1:
            principal = seen.pop(next(iter(principals)))
            base = self._principal_base(json.dumps([_pruned(principal, self._refs.names)]))
        delta = json.dumps([e.to_cedar() if names is None else _pruned(e, names) for e in seen.values()])
        try:
            entities = base.with_added_json_str(delta, self._schema if strict else None)
        except ValueError as exc:
            if strict:
                raise PolicyError(f"entities do not match the schema: {exc}") from None
            return [Decision(False, (), (f"bad entities: {exc}",)) for _ in requests]
        results = cedarpy.is_authorized_batch(
            cedar_requests, part.policy_set, entities, self._schema if strict else None
        )
        decisions = []
        for result in results:
            diagnostics = result.diagnostics
            if strict and result.decision == cedarpy.Decision.NoDecision:
                raise PolicyError(f"request does not match the schema: {'; '.join(diagnostics.errors)}")
            decisions.append(
                Decision(
                    result.decision == cedarpy.Decision.Allow,
                    tuple(sorted(diagnostics.reasons)),
                    tuple(diagnostics.errors),
                )
            )
        return decisions
