"""The decision cache's key for one action: everything that action's policies can read of a request.

A key is (token, resource part). The token stands for the action, the principal part (its id, its groups and
the attributes the policies name) and the context part (the fields they read, or all of it); it is interned
per engine (raywarden.policy.cache) so that a list of jobs hashes only each job's part. The resource part is
its type, its groups and the attributes the policies name, plus its id only when a policy can tell it
(raywarden.policy.reads). Whatever cannot be keyed safely gets no key, and Cedar decides it every time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raywarden.policy.cache import Uncacheable, freeze
from raywarden.policy.reads import Reads
from raywarden.policy.request import Entity

# Up to this many attribute names, entities are projected by position (two dict lookups for jobs.read);
# beyond it, by walking the entity's attributes.
_POSITIONAL = 8
_ABSENT = object()  # an attribute or context field the request does not carry
_CLUSTER_RESOURCE = object()  # the resource is the engine's own cluster entity, with its limits

# (type, id or None, parents, attributes) -> the entity's part of a key: one flat tuple, hashed per lookup.
Parter = Callable[[str, "str | None", Any, dict[str, Any]], tuple[Hashable, ...]]


def _value(value: Any) -> Hashable:
    return value if type(value) is str or value is _ABSENT else freeze(value)


def _parter(names: frozenset[str]) -> Parter:
    """How an entity's part of a key is built for these names; the few-names cases without a loop, since a
    job list builds one per job."""
    ordered = sorted(names)
    if len(ordered) > _POSITIONAL:

        def by_walking(kind: str, uid: str | None, parents: Any, attrs: dict[str, Any]) -> tuple[Hashable, ...]:
            return (kind, uid, parents, *[(k, _value(v)) for k, v in attrs.items() if k in names])

        return by_walking
    if len(ordered) == 1:
        (first,) = ordered

        def one(kind: str, uid: str | None, parents: Any, attrs: dict[str, Any]) -> tuple[Hashable, ...]:
            return (kind, uid, parents, _value(attrs.get(first, _ABSENT)))

        return one
    if len(ordered) == 2:
        first, second = ordered

        def two(kind: str, uid: str | None, parents: Any, attrs: dict[str, Any]) -> tuple[Hashable, ...]:
            a, b = attrs.get(first, _ABSENT), attrs.get(second, _ABSENT)
            if (type(a) is str or a is _ABSENT) and (type(b) is str or b is _ABSENT):
                return (kind, uid, parents, a, b)
            return (kind, uid, parents, _value(a), _value(b))

        return two

    def by_position(kind: str, uid: str | None, parents: Any, attrs: dict[str, Any]) -> tuple[Hashable, ...]:
        return (kind, uid, parents, *[_value(attrs.get(n, _ABSENT)) for n in ordered])

    return by_position


@dataclass(frozen=True)
class KeyShape:
    names: frozenset[str]
    context_names: tuple[str, ...]
    whole_context: bool
    resource_identity: bool
    identity_types: frozenset[str]  # entity types whose resources are keyed with their id
    cluster_uid: tuple[str, str]
    part: Parter = field(compare=False, repr=False)

    @classmethod
    def of(cls, reads: Reads, cluster: Entity) -> KeyShape:
        # A literal of the resource's type may be the resource; so may a parent of the cluster (fixed per set).
        identity_types = reads.literal_types | {t for t, _ in cluster.parents}
        return cls(
            reads.names,
            reads.context_names,
            reads.whole_context,
            reads.resource_identity,
            identity_types,
            (cluster.type, cluster.id),
            _parter(reads.names),
        )

    def outer(self, action: str, principal: Entity, context: dict[str, Any]) -> Hashable:
        """The action, the principal part and the context part; raises Uncacheable or TypeError."""
        principal_part = self.part(principal.type, principal.id, principal.parents, principal.attrs)
        if self.whole_context:
            context_part = freeze(context)
        else:
            context_part = tuple([_value(context.get(n, _ABSENT)) for n in self.context_names])
        return (action, principal_part, context_part)

    def resource_part(
        self, resource: Entity, principal: Entity, principal_types: frozenset[str] | None
    ) -> Hashable | None:
        """The resource's part of the key, or None when its decision cannot be keyed (Cedar decides it).
        ``principal_types``: the types of the principal's parents, if known already."""
        if principal_types is None:
            principal_types = frozenset(t for t, _ in principal.parents)
        return self.resource_parts((resource,), principal, principal_types)[0]

    def resource_parts(
        self, resources: Sequence[Entity], principal: Entity, principal_types: frozenset[str]
    ) -> list[Hashable | None]:
        """``resource_part`` of each resource: a job list's keys in one loop."""
        parts: list[Hashable | None] = []
        named_by_type: dict[str, bool] = {}
        part = self.part
        cluster_type, cluster_id = self.cluster_uid
        principal_type, principal_id = principal.type, principal.id
        for resource in resources:
            rtype, rid = resource.type, resource.id
            if rid == principal_id and rtype == principal_type:
                parts.append(None)  # one entity in two roles: Cedar sees whether the two agree
                continue
            if rid == cluster_id and rtype == cluster_type:
                parts.append(_CLUSTER_RESOURCE)
                continue
            named = named_by_type.get(rtype)
            if named is None:
                # Its id matters if a policy can name it, or if the principal may be in it (then the
                # principal's ancestors run through the resource's groups).
                named = named_by_type[rtype] = (
                    self.resource_identity or rtype in self.identity_types or rtype in principal_types
                )
            try:
                parts.append(part(rtype, rid if named else None, resource.parents, resource.attrs))
            except (Uncacheable, TypeError):
                parts.append(None)
        return parts
