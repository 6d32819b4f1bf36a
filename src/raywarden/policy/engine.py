"""Load, validate and evaluate the Cedar policy set. Cedar, through cedarpy's public API, is the only evaluator;
anything but an explicit permit is a denial.

Every policy is known by its ``@id`` annotation (or ``FILE#N`` without one), so a decision names the
policies that made it. The set is validated against the shipped schema when it is loaded; decisions then
skip per-request schema checks, and the entity builders in raywarden.policy.entities are tested against the
schema instead.

The gateway's path (``decide``, ``decide_many``, ``decide_each``) asks Cedar as little as cannot change the
decision: only the policies whose scope admits the action (a slice per action, made at load time), only the
attributes and context fields those policies name, and each principal parsed once (raywarden.policy.pruned).
What a slice can read is also the key of a bounded decision cache (raywarden.policy.keys and .cache): two
requests that agree on it get the same answer from Cedar, so the second gets Cedar's first answer. The strict
path (tests, ``policy test``, ``policy explain``) gives Cedar every policy and every attribute and checks
them against the schema. docs/policy.md, "Speed".
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import cedarpy

from raywarden.errors import PolicyError
from raywarden.policy.cache import DEFAULT_MAX_ENTRIES, DecisionCache, Uncacheable
from raywarden.policy.pruned import PrunedCedar, Slice, bad_entities, decision_of, encode, policy_set
from raywarden.policy.reads import slice_for
from raywarden.policy.request import ACTION_TYPE, CLUSTER_ID, NAMESPACE, Decision, Entity, PolicyRequest
from raywarden.policy.sources import (
    PolicyInfo,
    default_policy_files,
    load_policies,
    policy_files,
    schema_actions,
    shipped_schema,
)
from raywarden.state import StateDir

if TYPE_CHECKING:
    from raywarden.policy.explain import Explainer, Explanation

__all__ = [
    "CLUSTER_ID",
    "NAMESPACE",
    "Decision",
    "Entity",
    "PolicyEngine",
    "PolicyInfo",
    "PolicyRequest",
    "default_policy_files",
    "policy_files",
    "schema_actions",
    "shipped_schema",
]

# Never returned: every position of a batch is filled; a bug that left one empty still refuses.
_UNDECIDED = Decision(False, (), ("bad entities: undecided",))


class PolicyEngine:
    """A validated, pre-parsed policy set and its decision cache. Immutable: reload builds a new engine, so a
    reload starts with an empty cache."""

    def __init__(self, files: list[tuple[str, str]], cluster: Entity, *, cache_size: int = DEFAULT_MAX_ENTRIES) -> None:
        schema = cedarpy.Schema.from_str(shipped_schema())
        loaded = load_policies(files, schema)
        try:
            self._strict_base = cedarpy.Entities.from_json_str(encode([cluster.to_cedar()]), schema)
        except ValueError as exc:
            raise PolicyError(f"cluster limits do not match the schema: {exc}", hint="check config.json") from None
        digest = hashlib.sha256()
        for name, body in files:
            digest.update(name.encode() + b"\0" + body.encode() + b"\0")
        # The limits take part in decisions, so they take part in the version too.
        digest.update(json.dumps(cluster.to_cedar(), sort_keys=True).encode())
        self.version = digest.hexdigest()[:16]
        self.sources = tuple(name for name, _ in files)
        self.policies: tuple[PolicyInfo, ...] = loaded.infos
        self.cluster = cluster
        self.cache = DecisionCache(cache_size)
        self._schema = schema
        self._est = loaded.policies
        self._policy_set = policy_set(loaded.policies)
        self._cluster_uid = (cluster.type, cluster.id)
        self._pruned = PrunedCedar(loaded.policies, cluster, schema_actions())
        self._explainer: Explainer | None = None

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
        cls, files: list[tuple[str, str]], cluster: Entity | None = None, *, cache_size: int = DEFAULT_MAX_ENTRIES
    ) -> PolicyEngine:
        """``cache_size=0``: every decision through Cedar (bench/policy_bench.py's cold figures, tests)."""
        from raywarden.policy.entities import cluster_entity

        return cls(files, cluster or cluster_entity(None), cache_size=cache_size)

    # -- the gateway's path ----------------------------------------------------------------------------------

    def decide(
        self, request: PolicyRequest, extra_entities: tuple[Entity, ...] = (), *, strict: bool = False
    ) -> Decision:
        """One decision. ``strict`` also checks the request and entities against the schema (tests, explain)."""
        if strict or extra_entities:
            return self._decide_full([request], extra_entities, strict)[0]
        # _decide_actions for one request, without its lists: this is every request's path.
        part = self._pruned.slice(request.action)
        shape = part.shape
        key: Hashable | None = None
        try:
            token = self.cache.token(shape.outer(request.action, request.principal, request.context))
            resource_part = shape.resource_part(request.resource, request.principal, None)
            if resource_part is not None:
                key = (token, resource_part)
                found = self.cache.get(key)
                if found is not None:
                    return found
        except (Uncacheable, TypeError, ValueError):  # a value no key describes: Cedar decides every time
            key = None
        decision = self._pruned.evaluate(part, [request])[0]
        if key is not None and not decision.errors:  # an error message names the entities it was about
            self.cache.put(key, decision)
        return decision

    def decide_many(
        self, requests: Sequence[PolicyRequest], extra_entities: tuple[Entity, ...] = (), *, strict: bool = False
    ) -> list[Decision]:
        """Several decisions (a job list: one or two per job). Cached answers are reused; the rest are asked of
        Cedar in one call per action, principal and context, each distinct key once."""
        if not requests:
            return []
        if strict or extra_entities:
            return self._decide_full(requests, extra_entities, strict)
        groups: dict[tuple[int, int], dict[str, list[int]]] = {}
        for index, request in enumerate(requests):
            by_action = groups.setdefault((id(request.principal), id(request.context)), {})
            by_action.setdefault(request.action, []).append(index)
        decisions: list[Decision] = [_UNDECIDED] * len(requests)
        for by_action in groups.values():
            first = requests[next(iter(by_action.values()))[0]]
            lists = [[requests[i].resource for i in indices] for indices in by_action.values()]
            # A job list asks every action of every job: then the actions share one list of resources.
            shared = all(len(other) == len(lists[0]) and all(map(operator.is_, other, lists[0])) for other in lists)
            if shared:
                answers = self._decide_actions(first.principal, first.context, tuple(by_action), lists[0])
            else:
                answers = [
                    self._decide_actions(first.principal, first.context, (action,), resources)[0]
                    for action, resources in zip(by_action, lists, strict=True)
                ]
            for indices, decided in zip(by_action.values(), answers, strict=True):
                for index, decision in zip(indices, decided, strict=True):
                    decisions[index] = decision
        return decisions

    def decide_each(
        self, principal: Entity, context: dict[str, Any], actions: Sequence[str], resources: Sequence[Entity]
    ) -> list[tuple[Decision, ...]]:
        """For each resource, one decision per action, in order: what a job list needs (``jobs.read`` and
        ``jobs.read_env`` per job) without a PolicyRequest per decision."""
        if not actions:
            return [() for _ in resources]
        return list(zip(*self._decide_actions(principal, context, tuple(actions), resources), strict=True))

    def _decide_actions(
        self, principal: Entity, context: dict[str, Any], actions: tuple[str, ...], resources: Sequence[Entity]
    ) -> list[list[Decision]]:
        """Per action, the decisions on ``resources`` for one principal and context: from the cache where the key
        is there, else from Cedar (one call per action), which then fills the cache."""
        try:
            principal_types: frozenset[str] | None = frozenset(t for t, _ in principal.parents)
        except (TypeError, ValueError):  # malformed groups: not a principal the gateway builds
            principal_types = None
        parts_by_shape: dict[int, list[Hashable | None]] = {}
        decided = []
        for action in actions:
            part = self._pruned.slice(action)
            shape = part.shape
            try:
                if principal_types is None:
                    raise Uncacheable("malformed groups")
                token: int | None = self.cache.token(shape.outer(action, principal, context))
            except (Uncacheable, TypeError):  # a value no key describes: Cedar decides every time
                token = None
            if token is None:
                parts: list[Hashable | None] = [None] * len(resources)
            elif (parts_found := parts_by_shape.get(id(shape))) is not None:
                parts = parts_found
            else:
                parts = parts_by_shape[id(shape)] = shape.resource_parts(
                    resources, principal, principal_types or frozenset()
                )
            found: list[Decision | None] = [None] * len(resources)
            if token is not None:
                found, complete = self.cache.get_many(token, parts)
                if complete:  # every answer from the cache: a job list seen before
                    decided.append(cast(list[Decision], found))
                    continue
            decided.append(self._fill(part, principal, context, action, resources, token, parts, found))
        return decided

    def _fill(
        self,
        part: Slice,
        principal: Entity,
        context: dict[str, Any],
        action: str,
        resources: Sequence[Entity],
        token: int | None,
        parts: list[Hashable | None],
        found: list[Decision | None],
    ) -> list[Decision]:
        """Cedar's answers where the cache had none (each distinct key asked once), stored for the next time.
        Only decisions without errors are kept: an error message names the entities it was about."""
        misses: dict[Hashable, list[int]] = {}
        alone: list[int] = []
        for index, decision in enumerate(found):
            if decision is None:
                try:
                    if token is None or parts[index] is None:
                        raise Uncacheable("no key")
                    misses.setdefault((token, parts[index]), []).append(index)
                except (Uncacheable, TypeError):  # no key, or an unhashable value in it: Cedar decides alone
                    alone.append(index)
        if not misses and not alone:
            return [d if d is not None else _UNDECIDED for d in found]
        asked = [indices[0] for indices in misses.values()] + alone
        requests = [PolicyRequest(principal, action, resources[i], context) for i in asked]
        for index, answer in zip(asked, self._pruned.evaluate(part, requests), strict=True):
            found[index] = answer
        for key, indices in misses.items():
            first = found[indices[0]]
            if first is None or first.errors:  # decided one by one, each with its own messages
                for index in indices[1:]:
                    request = PolicyRequest(principal, action, resources[index], context)
                    found[index] = self._pruned.evaluate(part, [request])[0]
                continue
            self.cache.put(key, first)
            for index in indices[1:]:
                found[index] = first
        return [d if d is not None else _UNDECIDED for d in found]

    # -- the strict path ---------------------------------------------------------------------------------------

    def _decide_full(
        self, requests: Sequence[PolicyRequest], extra_entities: tuple[Entity, ...], strict: bool
    ) -> list[Decision]:
        """Every policy, every attribute, never cached; ``strict`` checks entities and requests against the
        schema and raises PolicyError where they do not match."""
        try:
            entities = self.strict_entities(requests, extra_entities, strict)
        except _Clash:
            return [self._decide_full([r], extra_entities, strict)[0] for r in requests]
        except PolicyError as exc:
            if strict:
                raise
            return [bad_entities(exc.message) for _ in requests]
        schema = self._schema if strict else None
        asked = [
            {
                "principal": r.principal.uid(),
                "action": {"type": ACTION_TYPE, "id": r.action},
                "resource": r.resource.uid(),
                "context": encode(r.context),
            }
            for r in requests
        ]
        decisions = []
        for result in cedarpy.is_authorized_batch(asked, self._policy_set, entities, schema):
            if strict and result.decision == cedarpy.Decision.NoDecision:
                errors = "; ".join(result.diagnostics.errors)
                raise PolicyError(f"request does not match the schema: {errors}")
            decisions.append(decision_of(result))
        return decisions

    def strict_entities(
        self, requests: Sequence[PolicyRequest], extra_entities: tuple[Entity, ...] = (), strict: bool = True
    ) -> cedarpy.Entities:
        """The full entity set of ``requests``: the cluster, their principals and resources with every attribute,
        checked against the schema when ``strict``. PolicyError when they do not fit together or the schema."""
        seen: dict[tuple[str, str], Entity] = {}
        for entity in (*(e for r in requests for e in (r.principal, r.resource)), *extra_entities):
            uid = (entity.type, entity.id)
            if uid == self._cluster_uid:
                continue  # the cluster, with its limits, is in the base set already
            if seen.setdefault(uid, entity) != entity:
                # Two entities with one uid (a submission id chosen equal to another job's id): one entity set
                # would decide both with the first one's attributes, so each is decided on its own.
                if len(requests) > 1:
                    raise _Clash(f"{entity.type}::{entity.id!r}")
                raise PolicyError(
                    f"entities do not match: two different entities are both {entity.type}::{entity.id!r}"
                )
        try:
            delta = encode([e.to_cedar() for e in seen.values()])
            return self._strict_base.with_added_json_str(delta, self._schema if strict else None)
        except (ValueError, TypeError) as exc:
            raise PolicyError(f"entities do not match the schema: {exc}") from None

    def explain(self, request: PolicyRequest) -> Explanation:
        """Cedar's strict decision on ``request`` and why (raywarden.policy.explain); PolicyError when the request
        does not match the schema."""
        from raywarden.policy.explain import Explainer

        if self._explainer is None:
            self._explainer = Explainer(self)
        return self._explainer.explain(request)

    def policy_json(self, policy_id: str) -> dict[str, Any]:
        """A policy as Cedar JSON (its "EST")."""
        return self._est[policy_id]

    def reads(self, action: str) -> frozenset[str]:
        """The attribute names the policies that can apply to ``action`` name (an attribute outside it cannot
        change a decision on ``action``)."""
        return self._pruned.slice(action).reads.names

    def slice_ids(self, action: str) -> tuple[str, ...]:
        """The ids of the policies whose scope can admit ``action`` (every policy for an undeclared action)."""
        return tuple(slice_for(self._est, action)) if self._pruned.declares(action) else tuple(self._est)

    @property
    def schema(self) -> cedarpy.Schema:
        return self._schema


class _Clash(PolicyError):
    """Two different entities with one uid among several requests: they are decided one by one."""
