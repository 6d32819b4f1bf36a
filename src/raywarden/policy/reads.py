"""What a set of Cedar policies can read of a request, found in the policies' Cedar JSON ("EST").

Cedar has no dynamic attribute access: a policy reads an attribute only by naming it (``x.attr``,
``x has attr``). So an attribute no policy names cannot change a decision, and neither can a context field
no policy names, unless a policy uses ``context`` as a whole. This is what both the pruned Cedar input and
the decision cache (raywarden.policy.cache) are keyed on. Every rule here errs towards "reads more": any
form it does not recognise counts as reading everything it could.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from raywarden.policy.request import ACTION_TYPE, NAMESPACE

_PREFIX = f"{NAMESPACE}::"
_RESOURCE = {"Var": "resource"}


def _is_uid(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str) and isinstance(value.get("id"), str)


def _is_literal(expr: Any) -> bool:
    """An entity literal in a condition: ``{"Value": {"__entity": {"type": ..., "id": ...}}}``."""
    value = expr.get("Value") if isinstance(expr, dict) and len(expr) == 1 else None
    return isinstance(value, dict) and len(value) == 1 and _is_uid(value.get("__entity"))


def _compares_resource_to_literal(op: str, operands: dict[str, Any]) -> bool:
    left, right = operands.get("left"), operands.get("right")
    if left == _RESOURCE and _is_literal(right):
        return True
    return op != "in" and right == _RESOURCE and _is_literal(left)  # `E in resource` reads E's groups: no


@dataclass(frozen=True)
class Reads:
    # Attribute names named anywhere (of any entity, record or context): entities keep only these.
    names: frozenset[str]
    # Context fields read one by one, sorted; all of them when ``whole_context``.
    context_names: tuple[str, ...]
    # ``context`` used other than field by field (compared whole, passed to a function...).
    whole_context: bool
    # ``resource`` used other than by its attributes or its type (``resource == X``, ``resource in X``, in a
    # set...): its id matters.
    resource_identity: bool
    # Entity types of the entity literals the policies name (``Raywarden::Cluster::"ray"``), without the
    # Raywarden namespace. A literal of the resource's type could be the resource itself, whose attributes
    # and ancestors the decision then reads by its id.
    literal_types: frozenset[str]


def reads_of(policies: Iterable[dict[str, Any]]) -> Reads:
    walker = _Walker()
    for policy in policies:
        walker.scope(policy.get("resource"))
        for part in ("principal", "action", "resource"):
            walker.visit(policy.get(part))
        walker.visit(policy.get("conditions"))
    return Reads(
        frozenset(walker.names),
        tuple(sorted(walker.context_names)),
        walker.whole_context,
        walker.resource_identity,
        frozenset(walker.literal_types),
    )


class _Walker:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.context_names: set[str] = set()
        self.whole_context = False
        self.resource_identity = False
        self.literal_types: set[str] = set()

    def scope(self, constraint: Any) -> None:
        """The resource's scope. ``resource is T`` reads its type only. ``resource == E`` and ``resource in E``
        with an entity literal E read its groups (in every key) and whether it is E itself, which only a
        resource of E's type can be: E's type joins the literal types, whose resources are keyed by id."""
        op = constraint.get("op") if isinstance(constraint, dict) else None
        if op == "All" or (op == "is" and "in" not in constraint):
            return
        inner = constraint.get("in") if op == "is" else constraint
        if op in ("==", "in", "is") and isinstance(inner, dict) and _is_uid(inner.get("entity")):
            return  # the literal's type is collected when the scope is visited
        self.resource_identity = True

    def visit(self, node: Any) -> None:
        if isinstance(node, list):
            for value in node:
                self.visit(value)
            return
        if not isinstance(node, dict):
            return
        var = node.get("Var")
        if var == "context":
            self.whole_context = True
        elif var == "resource":
            self.resource_identity = True
        literal = node.get("__entity", node)
        if isinstance(literal, dict) and isinstance(literal.get("type"), str) and "id" in literal:
            kind: str = literal["type"]
            self.literal_types.add(kind.removeprefix(_PREFIX))
        for key, value in node.items():
            if key in (".", "has") and isinstance(value, dict) and isinstance(value.get("attr"), str):
                self._attribute(value)
            elif key == "is" and isinstance(value, dict) and value.get("left") == _RESOURCE:
                # `resource is T` reads only the type, which every key holds; `is T in X` as `in` below.
                if "in" in value and not _is_literal(value["in"]):
                    self.resource_identity = True
                self.visit(value.get("in"))
            elif key in ("==", "!=", "in") and isinstance(value, dict) and _compares_resource_to_literal(key, value):
                # Whether the resource is (or is in) an entity literal: as for the scope above.
                self.visit(value["right"] if value.get("left") == _RESOURCE else value["left"])
            else:
                self.visit(value)

    def _attribute(self, node: dict[str, Any]) -> None:
        attr: str = node["attr"]
        self.names.add(attr)
        left = node.get("left")
        if left == {"Var": "context"}:
            self.context_names.add(attr)
        elif left != {"Var": "resource"}:  # `resource.attr` reads an attribute, not the resource's id
            self.visit(left)
        for key, value in node.items():
            if key not in ("left", "attr"):
                self.visit(value)


def action_scope(policy: dict[str, Any]) -> frozenset[str] | None:
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
        if not isinstance(entity, dict) or entity.get("type") != ACTION_TYPE or not isinstance(entity.get("id"), str):
            return None
        ids.add(entity["id"])
    return frozenset(ids)


def slice_for(policies: dict[str, dict[str, Any]], action: str) -> dict[str, dict[str, Any]]:
    """The policies whose scope can admit ``action``, for decisions on that action only.

    A policy whose action scope does not match is never satisfied and never evaluates its conditions (Cedar
    checks the scope first), so leaving it out changes neither the decision nor its reasons or errors. In the
    slice, a scope that names the action is true and becomes ``action`` (any): Cedar would otherwise build the
    set of ``action in [...]`` on every evaluation. A scope this module does not recognise stays as written.
    """
    chosen: dict[str, dict[str, Any]] = {}
    for pid, policy in policies.items():
        scope = action_scope(policy)
        if scope is None:
            chosen[pid] = policy
        elif action in scope:
            chosen[pid] = {**policy, "action": {"op": "All"}}
    return chosen
