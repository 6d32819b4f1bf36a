"""Cedar's decisions on the gateway's path, asked with as little as cannot change them.

Cedar, through cedarpy, charges a few microseconds for every value it parses and one or two for every policy
it evaluates. So a decision on one action gets only the policies whose scope admits that action (its slice,
made when the set is loaded), only the attributes and context fields those policies name
(raywarden.policy.reads), and each principal parsed once. Tests compare every action with the strict path.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import cedarpy

from raywarden.policy.cache import Uncacheable
from raywarden.policy.keys import KeyShape
from raywarden.policy.reads import Reads, reads_of, slice_for
from raywarden.policy.request import ACTION_TYPE, Decision, Entity, PolicyRequest

# Compact JSON for Cedar: nothing reads it but Cedar, and every byte is parsed on every decision.
encode = json.JSONEncoder(check_circular=False, separators=(",", ":")).encode
_MAX_PRINCIPALS = 4096


def policy_set(policies: dict[str, dict[str, Any]]) -> cedarpy.PolicySet:
    return cedarpy.PolicySet.from_json_str(encode({"staticPolicies": policies, "templates": {}, "templateLinks": []}))


def decision_of(result: cedarpy.AuthzResult) -> Decision:
    diagnostics = result.diagnostics
    return Decision(
        result.decision == cedarpy.Decision.Allow, tuple(sorted(diagnostics.reasons)), tuple(diagnostics.errors)
    )


def bad_entities(problem: str) -> Decision:
    return Decision(False, (), (f"bad entities: {problem}",))


@dataclass(frozen=True)
class Slice:
    """The policies that can apply to one action, what they read, and the cluster as they read it."""

    policies: cedarpy.PolicySet
    reads: Reads
    shape: KeyShape
    base: cedarpy.Entities  # the cluster with only the attributes these policies name
    base_text: str  # its JSON: names the base in the principal cache


class PrunedCedar:
    def __init__(self, policies: dict[str, dict[str, Any]], cluster: Entity, actions: frozenset[str]) -> None:
        self._cluster = cluster
        self._cluster_uid = (cluster.type, cluster.id)
        self._bases: dict[str, cedarpy.Entities] = {}
        # Equal shapes are one object, so that a job list's keys are computed once for actions that read alike.
        self._shapes: dict[KeyShape, KeyShape] = {}
        self._slices = {action: self._slice(slice_for(policies, action)) for action in sorted(actions)}
        self._full = self._slice(policies)  # for actions the schema does not declare: every policy
        # The slice's base with one principal added, parsed once per principal (a gateway serves few).
        self._principals: dict[Hashable, cedarpy.Entities] = {}

    def _slice(self, chosen: dict[str, dict[str, Any]]) -> Slice:
        reads = reads_of(chosen.values())
        base_text = encode([self._cluster.to_cedar(reads.names)])
        base = self._bases.get(base_text)
        if base is None:  # a few distinct ones: most actions read nothing of the cluster
            base = self._bases[base_text] = cedarpy.Entities.from_json_str(base_text)
        shape = KeyShape.of(reads, self._cluster)
        shape = self._shapes.setdefault(shape, shape)
        return Slice(policy_set(chosen), reads, shape, base, base_text)

    def slice(self, action: str) -> Slice:
        return self._slices.get(action, self._full)

    def declares(self, action: str) -> bool:
        return action in self._slices

    def evaluate(self, part: Slice, requests: list[PolicyRequest]) -> list[Decision]:
        """Cedar's decisions with only what ``part`` reads, in one call per set of requests whose entities agree
        (two jobs with one id but different attributes are asked in separate calls)."""
        if len(requests) == 1:
            return [self._ask_one(part, requests[0])]
        decisions: list[Decision | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        names = part.reads.names
        while pending:
            store: dict[tuple[str, str], dict[str, Any]] = {}
            batch: list[int] = []
            later: list[int] = []
            for index in pending:
                request = requests[index]
                own: dict[tuple[str, str], dict[str, Any]] = {}
                clash = None
                for entity in (request.principal, request.resource):
                    uid = (entity.type, entity.id)
                    if uid == self._cluster_uid and entity is request.resource:
                        continue  # the cluster, with its limits, is in the base set already
                    cedar = entity.to_cedar(names)
                    if own.setdefault(uid, cedar) != cedar:
                        clash = f"two different entities are both {entity.type}::{entity.id!r}"
                if clash is not None:
                    decisions[index] = bad_entities(clash)
                elif any(store.get(uid, cedar) != cedar for uid, cedar in own.items()):
                    later.append(index)
                else:
                    store.update(own)
                    batch.append(index)
            if batch:
                for index, decision in zip(batch, self._ask(part, [requests[i] for i in batch], store), strict=True):
                    decisions[index] = decision
            pending = later
        return [d if d is not None else bad_entities("undecided") for d in decisions]

    def _ask_one(self, part: Slice, request: PolicyRequest) -> Decision:
        """``evaluate`` of one request: the gateway's every cache miss, without a batch's bookkeeping."""
        principal, resource = request.principal, request.resource
        names = part.reads.names
        delta = []
        if (resource.type, resource.id) != self._cluster_uid:  # the cluster, with its limits, is in the base
            cedar = resource.to_cedar(names)
            if resource.type == principal.type and resource.id == principal.id:
                if cedar != principal.to_cedar(names):
                    return bad_entities(f"two different entities are both {resource.type}::{resource.id!r}")
            else:
                delta.append(cedar)
        try:
            base = self._principal_base(part, principal)
            entities = base.with_added_json_str(encode(delta)) if delta else base
            asked = [self._request(part, request)]
            return decision_of(cedarpy.is_authorized_batch(asked, part.policies, entities)[0])
        except (ValueError, TypeError, KeyError) as exc:  # not JSON, or not what Cedar accepts: refused
            return bad_entities(str(exc))

    @staticmethod
    def _request(part: Slice, request: PolicyRequest) -> dict[str, Any]:
        cedar: dict[str, Any] = {
            "principal": request.principal.uid(),
            "action": {"type": ACTION_TYPE, "id": request.action},
            "resource": request.resource.uid(),
        }
        context = request.context
        if not part.reads.whole_context:
            context = {k: context[k] for k in part.reads.context_names if k in context}
        if context:  # no context at all is Cedar's empty context, and cheaper to say
            cedar["context"] = encode(context)
        return cedar

    def _ask(
        self, part: Slice, requests: list[PolicyRequest], store: dict[tuple[str, str], dict[str, Any]]
    ) -> list[Decision]:
        base = part.base
        principals = {(r.principal.type, r.principal.id) for r in requests}
        try:
            if len(principals) == 1 and (uid := next(iter(principals))) in store:
                store.pop(uid)
                base = self._principal_base(part, requests[0].principal)
            entities = base.with_added_json_str(encode(list(store.values()))) if store else base
            asked = [self._request(part, r) for r in requests]
            return [decision_of(result) for result in cedarpy.is_authorized_batch(asked, part.policies, entities)]
        except (ValueError, TypeError, KeyError):  # one bad request refuses only itself, not the whole list
            return [self._ask_one(part, r) for r in requests]

    def _principal_base(self, part: Slice, principal: Entity) -> cedarpy.Entities:
        """The slice's base with the principal added, parsed once per principal as the slice reads it."""
        try:
            slot: Hashable = part.shape.part(principal.type, principal.id, principal.parents, principal.attrs)
            slot = (part.base_text, slot)
            found = self._principals.get(slot)
        except (Uncacheable, TypeError):  # values no key holds: parsed each time
            slot, found = None, None
        if found is None:
            found = part.base.with_added_json_str(encode([principal.to_cedar(part.reads.names)]))
            if slot is not None:
                if len(self._principals) >= _MAX_PRINCIPALS:
                    self._principals.clear()  # a gateway serves a few: this many means churn, start over
                self._principals[slot] = found
        return found
