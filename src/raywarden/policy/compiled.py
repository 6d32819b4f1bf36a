"""Cedar policies compiled to Python closures: the gateway's decision path.

A call into Cedar through cedarpy costs about 10 us before any policy runs, and 2 to 4 more for every value
it parses (bench/policy_bench.py), which puts a submission's decision well above the 100 us the gateway may
spend on it. This module evaluates the same policies, in the form Cedar's own parser gives them (the JSON
"EST"), with Cedar's semantics, over the entities the gateway built, without serialising anything.

It evaluates a subset of Cedar and is never the last word on anything outside it:

- a policy using anything else (tags, decimal, datetime, other ip methods, templates) makes ``compile_set``
  raise ``Unsupported``, and that set keeps deciding through cedarpy;
- anything Cedar would answer with an evaluation error (a missing attribute or entity, a type error, an
  overflow, a bad ip literal) raises ``Undecided``, and the engine asks cedarpy for that decision, so every
  decision that involves an error, its messages included, is Cedar's own;
- values Python would compare differently from Cedar (``true == 1``; a set holding both) raise ``Undecided``
  too, as do floats, nulls and records inside sets, none of which the gateway's entities hold.

tests/unit/policy/test_compiled.py checks it against cedarpy: the default pack's tables, and random policies
over random entities (hypothesis), errors included. The strict path (tests, ``policy explain``) is cedarpy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*(::[_a-zA-Z][_a-zA-Z0-9]*)*\Z")
# What Cedar's ip() accepts and ipaddress reads the same way: dotted quads without leading zeros, IPv6 in hex
# and colons only (no embedded IPv4, no zone), and an optional prefix length in range without leading zeros.
_IPV4 = re.compile(r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(/(3[0-2]|[12]?\d))?\Z")
_IPV6 = re.compile(r"[0-9a-fA-F:]{2,39}(/(12[0-8]|1[01]\d|[1-9]?\d))?\Z")
_IP_TYPES = (ipaddress.IPv4Interface, ipaddress.IPv6Interface)
# Cedar's reserved identifiers, which its JSON parser refuses as parts of an entity type name.
_RESERVED = frozenset({"true", "false", "if", "then", "else", "in", "is", "like", "has"})
_type_names_seen: set[str] = set()


class Unsupported(Exception):
    """A policy uses Cedar this module does not evaluate: its set is decided by cedarpy."""


class Undecided(Exception):
    """Cedar would answer this decision with an error, or with values this module does not compare: ask Cedar."""


class CedarSet(frozenset):  # type: ignore[type-arg]
    """A Cedar set. ``kind`` is bool or int when it holds Booleans or Longs (never both): Python's set would take
    ``true`` for ``1``, so operations between a set of one and a value of the other are decided by kind."""

    __slots__ = ("kind",)
    kind: type | None


Uid = tuple[str, str]  # (namespaced entity type, id): the only tuple among values


def make_set(items: list[Any]) -> CedarSet:
    kind: type | None = None
    for item in items:
        cls = type(item)
        if cls is bool or cls is int:
            if kind is None:
                kind = cls
            elif kind is not cls:
                raise Undecided("a set of Booleans and Longs")
        elif cls is not str and cls is not tuple and cls not in _IP_TYPES:
            raise Undecided("a set of sets or records")
    result = CedarSet(items)
    result.kind = kind
    return result


def parse_ip(text: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if type(text) is not str or not (_IPV4.match(text) or _IPV6.match(text)):
        raise Undecided("an ip literal outside the forms both parsers read alike")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise Undecided("not an ip address") from None


def text(raw: str) -> str:
    """``raw``, if Cedar's JSON parser reads it as the same string: Python's also reads lone surrogates."""
    if not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise Undecided("a string with a lone surrogate") from None
    return raw


def type_name(raw: str) -> str:
    """``raw``, if Cedar reads it as an entity type name."""
    if raw not in _type_names_seen:
        if not _NAME.match(raw) or any(part in _RESERVED or part.startswith("__") for part in raw.split("::")):
            raise Undecided("not an entity type name")
        if len(_type_names_seen) < 1024:
            _type_names_seen.add(raw)
    return raw


def _uid(raw: Any) -> Uid:
    if type(raw) is not dict or type(raw.get("type")) is not str or type(raw.get("id")) is not str:
        raise Undecided("not an entity reference")
    return (type_name(raw["type"]), text(raw["id"]))


def value(raw: Any) -> Any:
    """A Cedar JSON value (entity attribute, context field, literal) as this module's value."""
    cls = type(raw)
    if cls is str:
        return text(raw)
    if cls is bool:
        return raw
    if cls is int:
        if not _LONG_MIN <= raw <= _LONG_MAX:
            raise Undecided("a Long out of range")
        return raw
    if cls is list:
        if {*map(type, raw)} == {str} and all(map(str.isascii, raw)):  # the usual set, of plain strings
            result = CedarSet(raw)
            result.kind = None
            return result
        return make_set([value(item) for item in raw])
    if cls is dict:
        if "__entity" in raw or "__extn" in raw or "__expr" in raw:
            if len(raw) != 1:
                raise Undecided("an escape with other keys")
            if "__entity" in raw:
                return _uid(raw["__entity"])
            extension = raw.get("__extn")
            if type(extension) is dict and extension.keys() == {"fn", "arg"} and extension["fn"] == "ip":
                return parse_ip(extension["arg"])
            raise Undecided("an extension value other than ip")
        if raw.keys() == {"type", "id"}:
            raise Undecided("a record that Cedar may read as an entity reference")
        if not all(type(key) is str for key in raw):
            raise Undecided("a record key that is not a string")
        return {text(key): value(item) for key, item in raw.items()}
    raise Undecided(f"not a Cedar value: {cls.__name__}")


class Node:
    """One entity of a decision: its attributes, converted when first read, and its ancestors."""

    __slots__ = ("ancestors", "attrs", "cache", "parents")

    def __init__(self, attrs: Mapping[str, Any], parents: tuple[Uid, ...], given: Iterable[str] | None = None) -> None:
        """``given``: the attributes Cedar would be given (all when None). They are converted now, so that a value
        Cedar could not parse leaves the decision to Cedar even when no policy gets as far as reading it."""
        self.attrs = attrs
        self.parents = parents
        self.cache: dict[str, Any] = {}
        self.ancestors: frozenset[Uid] | None = None
        for name in attrs if given is None else given:
            if name in attrs:
                self.cache[name] = value(attrs[name])

    def attr(self, name: str) -> Any:
        try:
            return self.cache[name]
        except KeyError:
            pass
        if name not in self.attrs:
            raise Undecided(f"no attribute {name}")
        found = self.cache[name] = value(self.attrs[name])
        return found


class Env:
    """What a decision reads: the request and its entities (``store``)."""

    __slots__ = ("action", "context", "context_cache", "principal", "resource", "store")

    def __init__(
        self,
        principal: Uid,
        action: Uid,
        resource: Uid,
        context: Mapping[str, Any],
        store: dict[Uid, Node],
        given: Iterable[str] | None = None,
    ) -> None:
        """``given``: the context fields Cedar would be given (all when None), converted now as in Node."""
        self.principal, self.action, self.resource = principal, action, resource
        self.context = context
        self.store = store
        for node in store.values():  # Cedar refuses an entity graph with a cycle; only a deeper graph can have one
            if any((above := store.get(parent)) is not None and above.parents for parent in node.parents):
                _refuse_cycles(store)
                break
        self.context_cache = {
            name: value(context[name]) for name in (context if given is None else given) if name in context
        }

    def ancestors(self, uid: Uid) -> frozenset[Uid]:
        node = self.store.get(uid)
        if node is None:
            return frozenset()
        if node.ancestors is None:  # transitive over the entities of the decision, as Cedar computes it
            found: set[Uid] = set()
            pending = list(node.parents)
            while pending:
                parent = pending.pop()
                if parent not in found:
                    found.add(parent)
                    above = self.store.get(parent)
                    if above is not None:
                        pending.extend(above.parents)
            node.ancestors = frozenset(found)
        return node.ancestors

    def context_attr(self, name: str) -> Any:
        try:
            return self.context_cache[name]
        except KeyError:
            pass
        if name not in self.context:
            raise Undecided(f"no context field {name}")
        found = self.context_cache[name] = value(self.context[name])
        return found


Fn = Callable[[Env], Any]


def _refuse_cycles(store: Mapping[Uid, Node]) -> None:
    """Raise Undecided if an entity of ``store`` is its own ancestor."""
    done: set[Uid] = set()

    def visit(uid: Uid, path: set[Uid]) -> None:
        if uid in path:
            raise Undecided("a cycle among entity parents")
        if uid in done or uid not in store:
            return
        path.add(uid)
        for parent in store[uid].parents:
            visit(parent, path)
        path.discard(uid)
        done.add(uid)

    for uid in store:
        visit(uid, set())


# ---- operations, each raising Undecided where Cedar raises an evaluation error ----


def equal(a: Any, b: Any) -> bool:
    cls = type(a)
    if cls is not type(b):
        return False
    if cls is CedarSet:
        if a.kind is not None and b.kind is not None and a.kind is not b.kind:
            return False
        return frozenset.__eq__(a, b)
    if cls is dict:
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return a == b  # type: ignore[no-any-return]


def _boolean(v: Any) -> bool:
    if type(v) is not bool:
        raise Undecided("not a Boolean")
    return v


def _long(v: Any) -> int:
    if type(v) is not int:
        raise Undecided("not a Long")
    return v


def _checked(v: int) -> int:
    if not _LONG_MIN <= v <= _LONG_MAX:
        raise Undecided("overflow")
    return v


def _set(v: Any) -> CedarSet:
    if type(v) is not CedarSet:
        raise Undecided("not a set")
    return v


def _entity(v: Any) -> Uid:
    if type(v) is not tuple:
        raise Undecided("not an entity")
    return v


def contains(s: CedarSet, item: Any) -> bool:
    cls = type(item)
    if cls is dict or cls is CedarSet:
        return False  # sets here never hold sets or records
    if (cls is bool or cls is int) and s.kind is not None and s.kind is not cls:
        return False
    return item in s


def contains_all(a: CedarSet, b: CedarSet) -> bool:
    if a.kind is not None and b.kind is not None and a.kind is not b.kind:
        return False  # b holds a Boolean (or Long) that a, holding the other kind, cannot
    return b.issubset(a)


def contains_any(a: CedarSet, b: CedarSet) -> bool:
    if a.kind is not None and b.kind is not None and a.kind is not b.kind:
        return any(contains(a, item) for item in b)
    return not a.isdisjoint(b)


def in_entity(env: Env, left: Any, right: Any) -> bool:
    child = _entity(left)
    if type(right) is tuple:
        return child == right or right in env.ancestors(child)
    if type(right) is CedarSet:
        for item in right:
            _entity(item)
        return child in right or not env.ancestors(child).isdisjoint(right)
    raise Undecided("in needs an entity or a set of entities")


def attr_of(env: Env, target: Any, name: str) -> Any:
    cls = type(target)
    if cls is dict:
        if name not in target:
            raise Undecided(f"no attribute {name}")
        return target[name]
    if cls is tuple:
        node = env.store.get(target)
        if node is None:
            raise Undecided("no such entity")
        return node.attr(name)
    raise Undecided("attribute of a value that has none")


def has_attr(env: Env, target: Any, name: str) -> bool:
    cls = type(target)
    if cls is dict:
        return name in target
    if cls is tuple:
        node = env.store.get(target)
        if node is None:
            raise Undecided("no such entity")  # Cedar says false; rare enough to leave to it
        return name in node.attrs
    raise Undecided("has on a value that has no attributes")


def in_range(a: Any, b: Any) -> bool:
    if type(a) not in _IP_TYPES or type(b) not in _IP_TYPES:
        raise Undecided("isInRange needs ip values")
    if a.version != b.version:
        return False
    return a.network.subnet_of(b.network)  # type: ignore[no-any-return]


# ---- compiling expressions ----

_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "<": int.__lt__,
    "<=": int.__le__,
    ">": int.__gt__,
    ">=": int.__ge__,
}
_ARITHMETIC: dict[str, Callable[[int, int], int]] = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}


_NOTHING = object()
# Entities whose attributes are the same in every decision (the engine's cluster, with its limits), set while
# a policy compiles: reading them is folded into constants (``Cluster::"ray".developer_limits.milli_cpus``).
_FIXED: ContextVar[Mapping[Uid, Node] | None] = ContextVar("fixed_entities", default=None)


def _constant(v: Any) -> Fn:
    def constant(env: Env) -> Any:
        return v

    constant.value = v  # type: ignore[attr-defined]
    return constant


def _folded(known: Any, name: str, op: str) -> Any:
    """``known.name`` (or ``known has name``) when ``known`` is a constant record or a fixed entity, else _NOTHING."""
    fixed = _FIXED.get() or {}
    node = fixed.get(known) if type(known) is tuple else None
    if type(known) is not dict and node is None:
        return _NOTHING
    attrs: Mapping[str, Any] = known if node is None else node.attrs
    if op == "has":
        return name in attrs
    if name not in attrs:
        return _NOTHING  # an error at decision time, which leaves the decision to Cedar
    return attrs[name] if node is None else node.attr(name)


def compile_expr(node: Any) -> Fn:
    if type(node) is not dict or len(node) != 1:
        raise Unsupported(f"not an expression: {node!r:.80}")
    ((op, arg),) = node.items()
    if op == "Value":
        try:
            return _constant(value(arg))
        except Undecided as exc:
            raise Unsupported(str(exc)) from None
    if op == "Var":
        return _var(arg)
    if op in ("==", "!="):
        left, right = compile_expr(arg["left"]), compile_expr(arg["right"])
        if op == "==":
            return lambda env: equal(left(env), right(env))
        return lambda env: not equal(left(env), right(env))
    if op in ("&&", "||"):
        return _logic(op, node)
    if op in _COMPARE:
        compare, left, right = _COMPARE[op], compile_expr(arg["left"]), compile_expr(arg["right"])
        return lambda env: compare(_long(left(env)), _long(right(env)))
    if op in _ARITHMETIC:
        apply, left, right = _ARITHMETIC[op], compile_expr(arg["left"]), compile_expr(arg["right"])
        return lambda env: _checked(apply(_long(left(env)), _long(right(env))))
    if op == "!":
        inner = compile_expr(arg["arg"])
        return lambda env: not _boolean(inner(env))
    if op == "neg":
        inner = compile_expr(arg["arg"])
        return lambda env: _checked(-_long(inner(env)))
    if op == "isEmpty":
        inner = compile_expr(arg["arg"])
        return lambda env: not _set(inner(env))
    if op in ("contains", "containsAll", "containsAny"):
        return _set_op(op, compile_expr(arg["left"]), compile_expr(arg["right"]))
    if op == "in":
        left, right = compile_expr(arg["left"]), compile_expr(arg["right"])
        return lambda env: in_entity(env, left(env), right(env))
    if op in (".", "has"):
        return _attribute(op, arg)
    if op == "is":
        return _is(arg)
    if op == "like":
        return _like(arg)
    if op == "if-then-else":
        test, then, other = compile_expr(arg["if"]), compile_expr(arg["then"]), compile_expr(arg["else"])
        return lambda env: then(env) if _boolean(test(env)) else other(env)
    if op == "Set":
        items = [compile_expr(item) for item in arg]
        return lambda env: make_set([item(env) for item in items])
    if op == "Record":
        fields = {key: compile_expr(item) for key, item in arg.items()}
        return lambda env: {key: item(env) for key, item in fields.items()}
    if op in ("ip", "isInRange", "isIpv4", "isIpv6"):
        return _ip_call(op, arg)
    raise Unsupported(f"the {op} operation")


def _var(name: Any) -> Fn:
    if name == "principal":
        return lambda env: env.principal
    if name == "action":
        return lambda env: env.action
    if name == "resource":
        return lambda env: env.resource
    if name == "context":
        return lambda env: value(env.context)
    raise Unsupported(f"variable {name!r}")


def _logic(op: str, node: dict[str, Any]) -> Fn:
    """A chain of ``&&`` (or of ``||``) as one loop, left to right, stopping where Cedar stops."""
    operands: list[Fn] = []
    pending = [node]
    while pending:  # depth first, left before right: Cedar's evaluation order, however the chain nests
        part = pending.pop()
        if type(part) is dict and len(part) == 1 and op in part:
            pending += [part[op]["right"], part[op]["left"]]
        else:
            operands.append(compile_expr(part))
    stop = op == "||"  # the value that ends the chain: true for ||, false for &&

    go_on = not stop

    def chain(env: Env) -> bool:
        for operand in operands:
            result = operand(env)
            if result is stop:
                return not go_on
            if result is not go_on:
                raise Undecided("not a Boolean")
        return go_on

    return chain


def _set_op(op: str, left: Fn, right: Fn) -> Fn:
    if op == "contains":
        return lambda env: contains(_set(left(env)), right(env))
    if op == "containsAll":
        return lambda env: contains_all(_set(left(env)), _set(right(env)))
    return lambda env: contains_any(_set(left(env)), _set(right(env)))


def _attribute(op: str, arg: dict[str, Any]) -> Fn:
    name, target = arg["attr"], arg["left"]
    if type(name) is not str:
        raise Unsupported("an attribute name that is not a string")
    try:
        text(name)
    except Undecided as exc:
        raise Unsupported(str(exc)) from None
    if op == "." and target == {"Var": "context"}:  # the usual case: one field, converted once per decision
        return lambda env: env.context_attr(name)
    if op == "." and target == {"Var": "resource"}:
        return lambda env: attr_of(env, env.resource, name)
    if op == "." and target == {"Var": "principal"}:
        return lambda env: attr_of(env, env.principal, name)
    inner = compile_expr(target)
    folded = _folded(getattr(inner, "value", _NOTHING), name, op)
    if folded is not _NOTHING:
        return _constant(folded)
    if op == ".":
        return lambda env: attr_of(env, inner(env), name)
    return lambda env: has_attr(env, inner(env), name)


def _is(arg: dict[str, Any]) -> Fn:
    entity_type, left = arg["entity_type"], compile_expr(arg["left"])
    if type(entity_type) is not str or not _NAME.match(entity_type):
        raise Unsupported("an entity type that is not a name")
    if "in" not in arg:
        return lambda env: _entity(left(env))[0] == entity_type
    within = compile_expr(arg["in"])

    def is_in(env: Env) -> bool:
        uid = _entity(left(env))
        return uid[0] == entity_type and in_entity(env, uid, within(env))

    return is_in


def _like(arg: dict[str, Any]) -> Fn:
    chunks = [""]  # the literal text between wildcards: n wildcards make n + 1 chunks, some maybe empty
    for element in arg["pattern"]:
        if element == "Wildcard":
            chunks.append("")
        elif type(element) is dict and element.keys() == {"Literal"} and type(element["Literal"]) is str:
            chunks[-1] += text(element["Literal"])
        else:
            raise Unsupported("a like pattern element")
    left = compile_expr(arg["left"])

    def like(env: Env) -> bool:
        found = left(env)
        if type(found) is not str:
            raise Undecided("like needs a string")
        return matches(found, chunks)

    return like


def matches(subject: str, chunks: list[str]) -> bool:
    """Whether ``subject`` matches the wildcard pattern ``chunks[0]*chunks[1]*...``, in time linear in its length
    per chunk (the strings are the requester's: no backtracking). With ``*`` as the only wildcard, taking each
    middle chunk where it first occurs after the previous one never misses a match."""
    if len(chunks) == 1:
        return subject == chunks[0]
    first, last = chunks[0], chunks[-1]
    if len(subject) < len(first) + len(last) or not subject.startswith(first) or not subject.endswith(last):
        return False
    at, end = len(first), len(subject) - len(last)
    for chunk in chunks[1:-1]:
        if chunk:
            at = subject.find(chunk, at, end)
            if at < 0:
                return False
            at += len(chunk)
    return True


def _ip_call(op: str, args: Any) -> Fn:
    if type(args) is not list or len(args) != (2 if op == "isInRange" else 1):
        raise Unsupported(f"{op} with these arguments")
    compiled = [compile_expr(item) for item in args]
    if op == "ip":
        literal = args[0].get("Value") if type(args[0]) is dict else None
        if type(literal) is str:  # a literal range, as policies write them: parsed once
            try:
                return _constant(parse_ip(literal))
            except Undecided as exc:
                raise Unsupported(str(exc)) from None
        text = compiled[0]
        return lambda env: parse_ip(text(env))
    if op == "isInRange":
        left, right = compiled
        return lambda env: in_range(left(env), right(env))
    version, inner = (4 if op == "isIpv4" else 6), compiled[0]

    def is_version(env: Env) -> bool:
        address = inner(env)
        if type(address) not in _IP_TYPES:
            raise Undecided(f"{op} needs an ip value")
        return address.version == version  # type: ignore[no-any-return]

    return is_version


# ---- policies and sets ----


def _scope(variable: str, scope: Any) -> Fn | None:
    """The scope constraint on ``variable`` as a test, or None when it admits everything."""
    if type(scope) is not dict or "op" not in scope:
        raise Unsupported("a scope constraint")
    op = scope["op"]
    if op == "All":
        return None
    target = compile_expr({"Var": variable})
    if op == "==":
        uid = _scope_entity(scope)
        return lambda env: target(env) == uid
    if op == "in":
        if "entities" in scope:
            within: Any = make_set([_scope_entity({"entity": e}) for e in scope["entities"]])
        else:
            within = _scope_entity(scope)
        return lambda env: in_entity(env, target(env), within)
    if op == "is":
        entity_type = scope.get("entity_type")
        if type(entity_type) is not str or not _NAME.match(entity_type):
            raise Unsupported("an is constraint")
        if "in" not in scope:
            return lambda env: target(env)[0] == entity_type
        parent = _scope_entity(scope["in"])
        return lambda env: target(env)[0] == entity_type and in_entity(env, target(env), parent)
    raise Unsupported(f"a {op} scope constraint")


def _scope_entity(scope: Mapping[str, Any]) -> Uid:
    if "entity" not in scope:
        raise Unsupported("a template slot or another scope form")
    entity = scope["entity"]
    entity = entity.get("__entity", entity) if type(entity) is dict else entity
    try:
        return _uid(entity)
    except Undecided as exc:
        raise Unsupported(str(exc)) from None


def compile_policy(policy: Mapping[str, Any], fixed: Mapping[Uid, Node] | None = None) -> Fn:
    """A test that is true when the policy is satisfied, in Cedar's order: scope, then each condition.
    ``fixed``: entities that every decision's store holds unchanged (their attributes are folded in)."""
    token = _FIXED.set(fixed)
    try:
        return _compile_policy(policy)
    finally:
        _FIXED.reset(token)


def _compile_policy(policy: Mapping[str, Any]) -> Fn:
    action = policy.get("action")
    if type(action) is not dict or action.get("op") not in ("All", "==", "in"):
        raise Unsupported("an action scope other than ==, in or none")  # as Cedar's own parser
    tests = [
        test
        for test in (
            _scope("principal", policy.get("principal")),
            _scope("action", action),
            _scope("resource", policy.get("resource")),
        )
        if test is not None
    ]
    conditions = []
    for condition in policy.get("conditions") or ():
        kind = condition.get("kind") if type(condition) is dict else None
        if kind not in ("when", "unless"):
            raise Unsupported("a condition kind")
        conditions.append((kind == "when", compile_expr(condition.get("body"))))

    def satisfied(env: Env) -> bool:
        for test in tests:
            if not test(env):
                return False
        for wanted, body in conditions:
            if _boolean(body(env)) is not wanted:
                return False
        return True

    return satisfied


class CompiledSet:
    """A policy set as tests. ``decide`` gives Cedar's decision and reasons, or raises Undecided."""

    def __init__(self, policies: Iterable[tuple[str, str, Fn]]) -> None:
        chosen = list(policies)
        self.forbids = [(pid, test) for pid, effect, test in chosen if effect == "forbid"]
        self.permits = [(pid, test) for pid, effect, test in chosen if effect == "permit"]
        if len(self.forbids) + len(self.permits) != len(chosen):
            raise Unsupported("an effect other than permit or forbid")

    def decide(self, env: Env) -> tuple[bool, tuple[str, ...]]:
        # Every policy is evaluated, as Cedar does, so that an error anywhere leaves the decision to Cedar.
        forbidden = [pid for pid, test in self.forbids if test(env)]
        permitted = [pid for pid, test in self.permits if test(env)]
        if forbidden:
            return False, tuple(sorted(forbidden))
        return bool(permitted), tuple(sorted(permitted))
