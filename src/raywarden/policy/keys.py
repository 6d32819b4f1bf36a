"""The decision cache's key for one action: everything that action's policies can read of a request.

A key is (token, resource part). The token stands for the action, the principal part (its id, its groups and
the attributes the policies name) and the context part (the fields they read, or all of it); it is interned
per engine (raywarden.policy.cache) so that a list of jobs hashes only each job's part. The resource part is
its type, its groups and the attributes the policies name, plus its id only when a policy can tell it
(raywarden.policy.reads). Whatever cannot be keyed safely gets no key, and Cedar decides it every time.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from raywarden.policy.cache import Uncacheable, freeze
from raywarden.policy.reads import Reads
from raywarden.policy.request import Entity

# Up to this many attribute names, entities are projected by position (two dict lookups for jobs.read);
# beyond it, by walking the entity's attributes.
_POSITIONAL = 8
_ABSENT = object()  # an attribute or context field the request does not carry
_CLUSTER_RESOURCE = object()  # the resource is the engine's own cluster entity, with its limits


def _frozen(value: Any) -> Hashable:
    return value if value is _ABSENT else freeze(value)


@dataclass(frozen=True)
class KeyShape:
    names: frozenset[str]
    ordered: tuple[str, ...] | None  # the names, sorted, when few enough to project by position
    context_names: tuple[str, ...]
    whole_context: bool
    resource_identity: bool
    identity_types: frozenset[str]  # entity types whose resources are keyed with their id
    cluster_uid: tuple[str, str]

    @classmethod
    def of(cls, reads: Reads, cluster: Entity) -> KeyShape:
        ordered = tuple(sorted(reads.names)) if len(reads.names) <= _POSITIONAL else None
        # A literal of the resource's type may be the resource; so may a parent of the cluster (fixed per set).
        identity_types = reads.literal_types | {t for t, _ in cluster.parents}
        return cls(
            reads.names,
            ordered,
            reads.context_names,
            reads.whole_context,
            reads.resource_identity,
            identity_types,
            (cluster.type, cluster.id),
        )

    def project(self, attrs: dict[str, Any]) -> Hashable:
        """The attributes the policies name. Raises Uncacheable (or TypeError) for values it cannot key."""
        if self.ordered is not None:
            return tuple([v if type(v := attrs.get(n, _ABSENT)) is str else _frozen(v) for n in self.ordered])
        names = self.names
        return tuple([(k, v if type(v) is str else freeze(v)) for k, v in attrs.items() if k in names])

    def outer(self, action: str, principal: Entity, context: dict[str, Any]) -> Hashable:
        """The action, the principal part and the context part; raises Uncacheable or TypeError."""
        principal_part = (principal.type, principal.id, principal.parents, self.project(principal.attrs))
        if self.whole_context:
            context_part = freeze(context)
        else:
            context_part = tuple([_frozen(context.get(n, _ABSENT)) for n in self.context_names])
        return (action, principal_part, context_part)

    def resource_part(
        self, resource: Entity, principal: Entity, principal_types: frozenset[str] | None
    ) -> Hashable | None:
        """The resource's part of the key, or None when its decision cannot be keyed (Cedar decides it).
        ``principal_types``: the types of the principal's parents, if known already."""
        rtype, rid = resource.type, resource.id
        if rid == principal.id and rtype == principal.type:
            return None  # one entity in two roles: Cedar sees whether the two agree
        if rid == self.cluster_uid[1] and rtype == self.cluster_uid[0]:
            return _CLUSTER_RESOURCE
        # Its id matters if a policy can name it, or if the principal may be in it (then the principal's
        # ancestors run through the resource's groups).
        named = (
            self.resource_identity
            or rtype in self.identity_types
            or (
                rtype in principal_types
                if principal_types is not None
                else any(t == rtype for t, _ in principal.parents)
            )
        )
        try:
            return (rtype, rid if named else None, resource.parents, self.project(resource.attrs))
        except (Uncacheable, TypeError):
            return None

    def resource_parts(
        self, resources: Sequence[Entity], principal: Entity, principal_types: frozenset[str]
    ) -> list[Hashable | None]:
        """``resource_part`` of each resource: a job list's keys in one loop."""
        parts: list[Hashable | None] = []
        named_by_type: dict[str, bool] = {}
        ordered, names = self.ordered, self.names
        cluster_type, cluster_id = self.cluster_uid
        principal_type, principal_id = principal.type, principal.id
        for resource in resources:
            rtype, rid = resource.type, resource.id
            if rid == principal_id and rtype == principal_type:
                parts.append(None)
                continue
            if rid == cluster_id and rtype == cluster_type:
                parts.append(_CLUSTER_RESOURCE)
                continue
            named = named_by_type.get(rtype)
            if named is None:
                named = named_by_type[rtype] = (
                    self.resource_identity or rtype in self.identity_types or rtype in principal_types
                )
            attrs = resource.attrs
            try:
                if ordered is not None:
                    projected: Hashable = tuple(
                        [v if type(v := attrs.get(n, _ABSENT)) is str else _frozen(v) for n in ordered]
                    )
                else:
                    projected = tuple([(k, freeze(v)) for k, v in attrs.items() if k in names])
            except (Uncacheable, TypeError):
                parts.append(None)
                continue
            parts.append((rtype, rid if named else None, resource.parents, projected))
        return parts
