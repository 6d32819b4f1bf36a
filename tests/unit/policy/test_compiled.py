"""The compiled decision path against Cedar itself (cedarpy): random policies over random entities, and tables.

Whenever the compiled path answers, Cedar must give the same decision and reasons, with no evaluation error;
everywhere else it must step aside (Undecided), and the engine asks Cedar. The random cases are typed most of
the time (so that most get decided and the comparison means something) and mistyped some of the time (so that
Cedar's errors are exercised); a coverage check makes sure every operation was compared in decided cases.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import cedarpy
import pytest

from raywarden.policy.compiled import Env, Node, Undecided, Unsupported, compile_policy, value
from raywarden.policy.engine import Entity, PolicyEngine, PolicyRequest, default_policy_files
from raywarden.policy.entities import cluster_entity
from raywarden.state import ClusterConfig
from tests.unit.policy.policy_support import CONTEXT, job, principal

pytestmark = pytest.mark.unit

NS = "Raywarden"
USER, JOB, GROUP, CLUSTER = (f"{NS}::User", "alice"), (f"{NS}::Job", "j1"), f"{NS}::Group", (f"{NS}::Cluster", "ray")
ACTION = (f"{NS}::Action", "jobs.read")
UIDS = [USER, JOB, CLUSTER, (GROUP, "g1"), (GROUP, "g2"), (f"{NS}::Job", "j2"), ACTION]
TYPES = [f"{NS}::User", f"{NS}::Job", f"{NS}::Cluster", GROUP, f"{NS}::Action"]
LONGS = [0, 1, -1, 2, 7, 100, 2**63 - 1, -(2**63)]
STRINGS = ["", "a", "ab", "abc", "a*c", "*", "\u00e4", "A", "a\nb", "alice"]
IPS = [
    "10.0.0.1",
    "10.0.0.0/8",
    "10.1.2.3/16",
    "192.168.0.1/32",
    "0.0.0.0/0",
    "127.0.0.1",
    "::1",
    "::/0",
    "fe80::1/64",
    "2001:db8::/32",
    "1:2:3:4:5:6:7:8",
    "::ffff:10.0.0.1",
    "010.0.0.1",
    "10.0.0.1/33",
    "10.0.0.1/08",
    "fe80::1%eth0",
    "1.2.3",
    "",
    "10.0.0.256",
    "::ffff:a00:1",
    "0::0/0",
]
PATTERNS = [
    [{"Literal": "a"}, "Wildcard"],
    ["Wildcard"],
    [{"Literal": "a*c"}],
    [{"Literal": "a"}, "Wildcard", {"Literal": "c"}],
    [],
    ["Wildcard", {"Literal": "\u00e4"}],
    [{"Literal": "a"}, "Wildcard", "Wildcard"],
    [{"Literal": "a."}, "Wildcard"],
    [{"Literal": "a\nb"}],
]
ATTRS = {
    "n": "Long",
    "s": "String",
    "b": "Bool",
    "ss": "SetString",
    "ns": "SetLong",
    "bs": "SetBool",
    "e": "Entity",
    "es": "SetEntity",
    "ip": "Ip",
    "r": "Record",
    "m": "Any",
}
SIMPLE = ["Long", "String", "Bool", "Entity", "Ip"]


def _ref(uid: tuple[str, str]) -> dict[str, str]:
    return {"type": uid[0], "id": uid[1]}


class Gen:
    """Random Cedar JSON values, entities and EST expressions, typed with probability ``typed``."""

    def __init__(self, seed: int, typed: float = 0.95) -> None:
        self.rng = random.Random(seed)
        self.typed = typed

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # ---- data ----

    def data(self, kind: str, depth: int = 0) -> Any:
        r = self.rng
        if kind == "Any" or not self.chance(self.typed):
            kind = r.choice([*SIMPLE, "SetString", "SetLong", "SetBool", "Record"] if depth < 1 else SIMPLE)
        if kind == "Long":
            return r.choice(LONGS)
        if kind == "String":
            return r.choice(STRINGS)
        if kind == "Bool":
            return r.choice([True, False])
        if kind == "Entity":
            return {"__entity": _ref(r.choice(UIDS))}
        if kind == "Ip":
            return {"__extn": {"fn": "ip", "arg": r.choice(IPS[:11] if self.chance(0.97) else IPS)}}
        if kind.startswith("Set"):
            return [self.data(kind[3:], depth + 1) for _ in range(r.randint(0, 3))]
        return {k: self.data(ATTRS[k], depth + 1) for k in r.sample(["n", "s", "b"], r.randint(0, 3))}

    def attrs(self) -> dict[str, Any]:
        return {name: self.data(kind) for name, kind in ATTRS.items() if self.chance(0.9)}

    def entities(self) -> list[dict[str, Any]]:
        r = self.rng
        groups = [{"type": GROUP, "id": g} for g in ("g1", "g2") if self.chance(0.5)]
        found = [
            {"uid": {"type": USER[0], "id": USER[1]}, "attrs": self.attrs(), "parents": groups},
            {
                "uid": {"type": JOB[0], "id": JOB[1]},
                "attrs": self.attrs(),
                "parents": [{"type": CLUSTER[0], "id": CLUSTER[1]}] if self.chance(0.8) else [],
            },
            {
                "uid": {"type": CLUSTER[0], "id": CLUSTER[1]},
                "attrs": self.attrs(),
                "parents": [{"type": GROUP, "id": "g2"}] if self.chance(0.3) else [],
            },
        ]
        if self.chance(0.3):  # a group in a group: ancestors are transitive
            found.append({"uid": {"type": GROUP, "id": "g1"}, "attrs": {}, "parents": [{"type": GROUP, "id": "g2"}]})
        r.shuffle(found)
        return found

    # ---- expressions ----

    def expr(self, kind: str, depth: int) -> dict[str, Any]:
        r = self.rng
        if not self.chance(self.typed):
            kind = r.choice([*SIMPLE, "SetString", "SetLong", "Record"])
        leaf = depth <= 0 or self.chance(0.3)
        if kind == "Bool" and not leaf:
            return self.boolean(depth - 1)
        if kind == "Long" and not leaf and self.chance(0.5):
            op = r.choice(["+", "-", "*", "neg", "if-then-else"])
            if op == "neg":
                return {"neg": {"arg": self.expr("Long", depth - 1)}}
            if op == "if-then-else":
                return {
                    op: {
                        "if": self.expr("Bool", depth - 1),
                        "then": self.expr("Long", depth - 1),
                        "else": self.expr("Long", depth - 1),
                    }
                }
            return {op: {"left": self.expr("Long", depth - 1), "right": self.expr("Long", depth - 1)}}
        if kind.startswith("Set") and self.chance(0.4):
            return {"Set": [self.expr(kind[3:] or "Long", depth - 1) for _ in range(r.randint(0, 3))]}
        if kind == "Record" and self.chance(0.3):
            return {"Record": {k: self.expr(ATTRS[k], depth - 1) for k in r.sample(["n", "s", "b"], r.randint(0, 3))}}
        if kind == "Ip" and self.chance(0.4):
            return {"ip": [{"Value": r.choice(IPS[:11])}] if self.chance(0.8) else [self.expr("String", depth - 1)]}
        if kind == "Entity" and self.chance(0.6):
            return r.choice(
                [
                    {"Var": "principal"},
                    {"Var": "resource"},
                    {"Var": "action"},
                    {"Value": {"__entity": _ref(r.choice(UIDS))}},
                ]
            )
        if kind == "Record" and self.chance(0.3):
            return {"Var": "context"}
        if self.chance(0.55):  # an attribute of an entity, the context or a record
            names = [n for n, k in ATTRS.items() if k == kind] or list(ATTRS)
            return {".": {"left": self.holder(depth - 1), "attr": r.choice(names)}}
        return {"Value": self.data(kind)}

    def holder(self, depth: int) -> dict[str, Any]:
        r = self.rng
        if self.chance(0.8):
            return r.choice(
                [
                    {"Var": "principal"},
                    {"Var": "resource"},
                    {"Var": "context"},
                    {"Value": {"__entity": _ref(r.choice(UIDS))}},
                ]
            )
        return self.expr("Record" if self.chance(0.5) else "Entity", depth)

    def boolean(self, depth: int) -> dict[str, Any]:
        r = self.rng
        op = r.choice(
            [
                "==",
                "!=",
                "<",
                "<=",
                ">",
                ">=",
                "&&",
                "||",
                "!",
                "in",
                "is",
                "like",
                "contains",
                "containsAll",
                "containsAny",
                "isEmpty",
                "has",
                "isInRange",
                "isIpv4",
                "isIpv6",
                "if-then-else",
                "attr",
            ]
        )
        if op in ("==", "!="):
            kind = r.choice([*SIMPLE, "SetString", "SetLong", "SetBool", "Record"])
            other = kind if self.chance(0.8) else r.choice(SIMPLE)
            return {op: {"left": self.expr(kind, depth), "right": self.expr(other, depth)}}
        if op in ("<", "<=", ">", ">="):
            return {op: {"left": self.expr("Long", depth), "right": self.expr("Long", depth)}}
        if op in ("&&", "||"):
            return {op: {"left": self.expr("Bool", depth), "right": self.expr("Bool", depth)}}
        if op == "!":
            return {op: {"arg": self.expr("Bool", depth)}}
        if op == "in":
            right = self.expr("SetEntity" if self.chance(0.4) else "Entity", depth)
            return {op: {"left": self.expr("Entity", depth), "right": right}}
        if op == "is":
            found = {"left": self.expr("Entity", depth), "entity_type": r.choice(TYPES)}
            if self.chance(0.4):
                found["in"] = self.expr("Entity", depth)
            return {op: found}
        if op == "like":
            return {op: {"left": self.expr("String", depth), "pattern": r.choice(PATTERNS)}}
        if op == "contains":
            kind = r.choice(["String", "Long", "Bool", "Entity"])
            return {op: {"left": self.expr("Set" + kind, depth), "right": self.expr(kind, depth)}}
        if op in ("containsAll", "containsAny"):
            kinds = [r.choice(["String", "Long", "Bool"]) for _ in range(2)]
            return {op: {"left": self.expr("Set" + kinds[0], depth), "right": self.expr("Set" + kinds[1], depth)}}
        if op == "isEmpty":
            return {op: {"arg": self.expr(r.choice(["SetString", "SetLong"]), depth)}}
        if op == "has":
            return {op: {"left": self.holder(depth), "attr": r.choice(list(ATTRS))}}
        if op == "isInRange":
            return {op: [self.expr("Ip", depth), self.expr("Ip", depth)]}
        if op in ("isIpv4", "isIpv6"):
            return {op: [self.expr("Ip", depth)]}
        if op == "if-then-else":
            return {
                op: {"if": self.expr("Bool", depth), "then": self.expr("Bool", depth), "else": self.expr("Bool", depth)}
            }
        return {".": {"left": self.holder(depth), "attr": "b"}}

    def scope(self, variable: str) -> dict[str, Any]:
        r = self.rng
        uid = {"type": r.choice(UIDS)[0], "id": r.choice(UIDS)[1]} if self.chance(0.2) else _ref(r.choice(UIDS))
        if variable == "action":
            op = r.choice(["All", "All", "==", "in", "ins"])
            uid = _ref(r.choice([ACTION, (ACTION[0], "jobs.stop")]))
        else:
            op = r.choice(["All", "All", "All", "==", "in", "is", "isin"])
        if op == "All":
            return {"op": "All"}
        if op in ("==", "in"):
            return {"op": op, "entity": uid}
        if op == "ins":
            return {
                "op": "in",
                "entities": [{"type": ACTION[0], "id": r.choice(["jobs.read", "jobs.stop"])} for _ in range(2)],
            }
        found: dict[str, Any] = {"op": "is", "entity_type": r.choice(TYPES)}
        if op == "isin":
            found["in"] = {"entity": uid}
        return found

    def policy(self) -> dict[str, Any]:
        return {
            "effect": self.rng.choice(["permit", "permit", "permit", "forbid"]),
            "principal": self.scope("principal"),
            "action": self.scope("action"),
            "resource": self.scope("resource"),
            "conditions": [
                {"kind": self.rng.choice(["when", "when", "unless"]), "body": self.boolean(3)}
                for _ in range(self.rng.choice([0, 1, 1, 2]))
            ],
            "annotations": {},
        }


def _operations(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, item in node.items():
            if key == "in" and isinstance(item, dict) and "left" in item:  # the operation, not `is ... in`
                found.add(key)
            if key not in (
                "left",
                "right",
                "arg",
                "if",
                "then",
                "else",
                "attr",
                "pattern",
                "in",
                "entity_type",
                "Value",
                "Var",
                "body",
                "kind",
                "annotations",
                "effect",
                "principal",
                "action",
                "resource",
                "conditions",
                "op",
                "entity",
                "entities",
            ):
                found.add(key)
            if key != "Value":
                _operations(item, found)
    elif isinstance(node, list):
        for item in node:
            _operations(item, found)


def cedar_decides(
    policies: dict[str, Any], entities: list[dict[str, Any]], context: dict[str, Any]
) -> tuple[bool, tuple[str, ...], tuple[str, ...]] | None:
    """Cedar's decision, reasons and errors, or None when Cedar refuses the policies or the entities."""
    try:
        policy_set = cedarpy.PolicySet.from_json_str(
            json.dumps({"staticPolicies": policies, "templates": {}, "templateLinks": []})
        )
        store = cedarpy.Entities.from_json_str(json.dumps(entities))
    except ValueError:
        return None
    request = {"principal": _ref(USER), "action": _ref(ACTION), "resource": _ref(JOB), "context": context}
    result = cedarpy.is_authorized(request, policy_set, store)
    if result.decision == cedarpy.Decision.NoDecision:
        return None
    return (
        result.decision == cedarpy.Decision.Allow,
        tuple(sorted(result.diagnostics.reasons)),
        tuple(result.diagnostics.errors),
    )


def compiled_decides(
    policies: dict[str, Any], entities: list[dict[str, Any]], context: dict[str, Any]
) -> tuple[bool, tuple[str, ...]] | str:
    """The compiled path's decision and reasons, or why it stepped aside."""
    from raywarden.policy.compiled import CompiledSet

    try:
        compiled = CompiledSet((pid, p["effect"], compile_policy(p)) for pid, p in policies.items())
    except Unsupported:
        return "unsupported"
    try:
        store = {
            (e["uid"]["type"], e["uid"]["id"]): Node(e["attrs"], tuple((p["type"], p["id"]) for p in e["parents"]))
            for e in entities
        }
        return compiled.decide(Env(USER, ACTION, JOB, context, store))
    except Undecided:
        return "undecided"


OPERATIONS = {
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "in",
    "is",
    "like",
    "contains",
    "containsAll",
    "containsAny",
    "isEmpty",
    "has",
    ".",
    "isInRange",
    "isIpv4",
    "isIpv6",
    "if-then-else",
    "+",
    "-",
    "*",
    "neg",
    "Set",
    "Record",
    "ip",
}


@pytest.mark.parametrize("seed", range(4))
def test_random_policies_decide_as_cedar(seed: int) -> None:
    gen = Gen(seed)
    outcomes: Counter[str] = Counter()
    compared: set[str] = set()
    for case in range(1500):
        policies = {f"p{i}": gen.policy() for i in range(gen.rng.randint(1, 3))}
        entities = gen.entities()
        context = {k: gen.data(kind) for k, kind in ATTRS.items() if gen.chance(0.8)}
        mine = compiled_decides(policies, entities, context)
        theirs = cedar_decides(policies, entities, context)
        if isinstance(mine, str):
            outcomes[mine] += 1
            continue
        where = f"seed {seed} case {case}: {json.dumps(policies)}\nentities {json.dumps(entities)}\ncontext {context}"
        assert theirs is not None, f"Cedar refused what the compiled path decided, {where}"
        assert theirs[2] == (), f"Cedar had errors {theirs[2]} where the compiled path decided, {where}"
        assert mine == theirs[:2], f"compiled {mine} != Cedar {theirs[:2]}, {where}"
        outcomes["allowed" if mine[0] else "denied"] += 1
        _operations(policies, compared)
    decided = outcomes["allowed"] + outcomes["denied"]
    print(dict(outcomes))
    assert decided >= 500 and outcomes["allowed"] >= 100, outcomes
    assert compared >= OPERATIONS, f"never compared in a decided case: {OPERATIONS - compared}"


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        ("[true] == [1]", False),
        ("[1].contains(true)", False),
        ("[1, 2].containsAll([true])", False),
        ("[1, 2].containsAny([true, 2])", None),
        ("{a: true} == {a: 1}", False),
        ("[[1]] == [[true]]", None),
        ('"a\\nb" like "a*"', True),
        ('"ab" like "a\\*"', False),
        ('"a*" like "a\\*"', True),
        ('ip("10.1.2.3/16") == ip("10.1.0.0/16")', False),
        ('ip("10.1.2.3").isInRange(ip("10.1.0.0/16"))', True),
        ('ip("::1").isInRange(ip("0.0.0.0/0"))', False),
        ("9223372036854775807 + 1 > 0", None),
        ("-(-9223372036854775807 - 1) > 0", None),
        ('context.source.isInRange(ip("10.0.0.0/8"))', None),
        # Wildcards against a long subject: a backtracking matcher takes minutes here, Cedar's (and ours) no time.
        (f'"{"a" * 400}" like "*a*a*a*a*b"', False),
        (f'"{"a" * 400}b" like "*a*a*a*a*b"', True),
        ('"abcabc" like "a*c*c"', True),
        ('"abc" like "a*bc*c"', False),
        ('"ab" like "ab**"', True),
    ],
)
def test_tricky_cases(body: str, allowed: bool | None) -> None:
    """Python's own ``True == 1`` and friends are not Cedar's; None: the compiled path must step aside."""
    try:
        est = json.loads(cedarpy.policies_to_json_str(f"permit(principal, action, resource) when {{ {body} }};"))
    except ValueError:
        pytest.skip("Cedar's parser refuses it")
    policies = {"p": next(iter(est["staticPolicies"].values()))}
    entities = [{"uid": {"type": USER[0], "id": USER[1]}, "attrs": {}, "parents": []}]
    mine, theirs = compiled_decides(policies, entities, {}), cedar_decides(policies, entities, {})
    assert theirs is not None
    if allowed is None:
        assert mine in ("undecided", "unsupported")
    else:
        assert theirs == (allowed, ("p",) if allowed else (), ())
        assert mine == theirs[:2]


def test_values_outside_the_subset_are_left_to_cedar() -> None:
    for raw in (
        1.5,
        None,
        [True, 1],
        [[1]],
        [{"a": 1}],
        {"type": "T", "id": "x"},
        2**63,
        {"__extn": {"fn": "decimal", "arg": "1.0"}},
        {"__entity": {"type": "1bad", "id": "x"}},
        # Cedar's JSON parser refuses lone surrogates, which Python's reads, and reserved identifiers.
        "\ud800",
        ["ok", "\udc80"],
        {"\udc80": 1},
        {1: "x"},
        {"__entity": {"type": "T", "id": "\ud800"}},
        {"__entity": {"type": "in", "id": "a"}},
        {"__entity": {"type": "__cedar::X", "id": "a"}},
    ):
        with pytest.raises(Undecided):
            value(raw)
    assert value(["caf\u00e9", "x"]) == {"caf\u00e9", "x"}


def test_a_cycle_among_parents_is_left_to_cedar() -> None:
    policies = {
        "p": {
            "effect": "permit",
            "principal": {"op": "All"},
            "action": {"op": "All"},
            "resource": {"op": "in", "entity": _ref(JOB)},
            "conditions": [],
            "annotations": {},
        }
    }
    for parents in ([_ref(JOB)], [_ref(CLUSTER)]):
        entities: list[dict[str, Any]] = [
            {"uid": _ref(USER), "attrs": {}, "parents": []},
            {"uid": _ref(JOB), "attrs": {}, "parents": parents},
            {"uid": _ref(CLUSTER), "attrs": {}, "parents": [_ref(JOB)]},
        ]
        assert compiled_decides(policies, entities, {}) == "undecided"
        assert cedar_decides(policies, entities, {}) is None  # Cedar refuses the entity set


def test_a_submission_cedar_cannot_read_is_decided_by_cedar() -> None:
    """An env var name with a lone surrogate: Cedar refuses the entity, so the gateway's path must too."""
    from tests.unit.policy.policy_support import submission

    alice = principal("alice", "developers")
    odd = submission("alice", runtime_env={"env_vars": {"FOO\udc80": "1"}})
    request = PolicyRequest(alice, "jobs.submit", odd, CONTEXT)
    fast = PolicyEngine.from_sources(default_policy_files(), cluster_entity(None))
    cedar_only = PolicyEngine.from_sources(default_policy_files(), cluster_entity(None), compiled=False)
    decision = fast.decide(request)
    assert decision == cedar_only.decide(request) and not decision.allowed and decision.errors
    assert fast.decided_by_cedar == 1


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "cedar"])
def test_two_jobs_with_one_id_are_decided_each_on_its_own(compiled: bool) -> None:
    """A job list where a submission id equals another job's id: one entity set would lend one job's owner to the
    other, so each is decided with its own attributes."""
    engine = PolicyEngine.from_sources(default_policy_files(), cluster_entity(None), compiled=compiled)
    alice = principal("alice", "developers")
    requests = [
        PolicyRequest(alice, "jobs.read", job("alice", "same"), CONTEXT),
        PolicyRequest(alice, "jobs.read", job("bob", "same"), CONTEXT),
    ]
    assert [d.allowed for d in engine.decide_many(requests)] == [True, False]
    assert [d.allowed for d in engine.decide_many(requests[::-1])] == [False, True]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "cedar"])
def test_a_record_compared_whole_keeps_all_its_fields(compiled: bool) -> None:
    """Only whole attributes nobody names are left out for Cedar: fields of a record may be compared whole."""
    extra = [
        (
            "ops/limits.cedar",
            '@id("ops-default-limits")\npermit (principal in Raywarden::Group::"ops", '
            'action == Raywarden::Action::"jobs.list", resource) when { Raywarden::Cluster::"ray".developer_limits '
            '== {milli_cpus: 4000, milli_gpus: 0, memory: 8589934592, resources: ["TPU"], '
            "milli_resource_amount: 0} };",
        )
    ]
    cluster = cluster_entity(ClusterConfig(developer_resources=["TPU"]))
    engine = PolicyEngine.from_sources([*default_policy_files(), *extra], cluster, compiled=compiled)
    request = PolicyRequest(principal("olga", "ops"), "jobs.list", Entity("Cluster", "ray"), CONTEXT)
    assert engine.decide(request) == engine.decide(request, strict=True)
    assert engine.decide(request).allowed


def test_policies_outside_the_subset_compile_to_nothing_and_cedar_decides() -> None:
    """A decimal comparison is Cedar's to evaluate: that action's slice has no compiled set, decisions still
    come out right, and every other action keeps its compiled set."""
    files = [
        *default_policy_files(),
        (
            "ops.cedar",
            '@id("ops-decimal")\nforbid (principal, action == '
            'Raywarden::Action::"jobs.stop", resource) when { decimal("1.5").lessThan(decimal("2.0")) };',
        ),
    ]
    engine = PolicyEngine.from_sources(files, cluster_entity(None))
    assert engine._slices["jobs.stop"].compiled is None
    assert engine._slices["jobs.read"].compiled is not None
    alice = principal("alice", "developers")
    decision = engine.decide(PolicyRequest(alice, "jobs.stop", job("alice"), CONTEXT))
    assert not decision.allowed and decision.policy_ids == ("ops-decimal",)


def test_an_evaluation_error_is_decided_and_explained_by_cedar() -> None:
    """A resource without an attribute the pack reads: Cedar's error message, not the compiled path's guess."""
    engine = PolicyEngine.from_sources(default_policy_files(), cluster_entity(None))
    alice = principal("alice", "developers")
    broken = Entity("Job", "raysubmit_1", {"status": "RUNNING"}, (("Cluster", "ray"),))
    before = engine.decided_by_cedar
    decision = engine.decide(PolicyRequest(alice, "jobs.read", broken, CONTEXT))
    assert not decision.allowed and decision.policy_ids == ()
    assert any("owner" in error for error in decision.errors), decision.errors
    assert engine.decided_by_cedar == before + 1
