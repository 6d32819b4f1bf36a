"""The policy decision point: loading refuses a bad set whole, ids explain decisions, entities match the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from raywarden.errors import PolicyError
from raywarden.policy.engine import CLUSTER_ID, Entity, PolicyEngine, PolicyRequest, default_policy_files
from tests.unit.policy.policy_support import CONTEXT, decide, engine, job, principal, submission

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('permit(principal, action == Raywarden::Action::"nope", resource);', r"bad\.cedar: does not match the schema"),
        ("permit(", r"bad\.cedar"),
        ('permit(principal, action, resource) when { resource.no_such_attr == "x" };', "does not match the schema"),
        ('@id("admins-all")\npermit(principal, action, resource);', "already used in default/admins.cedar"),
        ("permit(principal == ?principal, action, resource);", "templates are not supported"),
    ],
)
def test_invalid_policy_is_refused_whole(body: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        PolicyEngine.from_sources([*default_policy_files(), ("bad.cedar", body)])


def test_empty_set_is_refused() -> None:
    with pytest.raises(PolicyError, match="empty"):
        PolicyEngine.from_sources([])
    with pytest.raises(PolicyError, match="no policies"):
        PolicyEngine.from_sources([("blank.cedar", "  \n// nothing\n")])


def test_policies_without_an_id_are_named_by_file_and_position(tmp_path: Path) -> None:
    (tmp_path / "z.cedar").write_text('forbid(principal, action == Raywarden::Action::"jobs.delete", resource);')
    eng = PolicyEngine.load(tmp_path)
    assert str(tmp_path / "z.cedar") in eng.sources
    decision = eng.decide(PolicyRequest(principal("root", "admins"), "jobs.delete", job("bob"), CONTEXT))
    assert not decision.allowed and decision.policy_ids == (f"{tmp_path / 'z.cedar'}#0",)
    assert "forbidden by" in decision.reason


def test_version_changes_with_the_policy_text() -> None:
    base = engine()
    assert base.version == engine().version
    assert base.version != engine(extra=[("x.cedar", "// only a comment\n")]).version


def test_strict_decisions_check_entities_against_the_schema() -> None:
    eng = engine()
    bad = job("alice")
    bad.attrs.pop("owner")
    with pytest.raises(PolicyError, match="schema"):
        eng.decide(PolicyRequest(principal("alice", "developers"), "jobs.read", bad, CONTEXT), strict=True)
    # The fast path fails closed instead of raising.
    assert not eng.decide(PolicyRequest(principal("alice", "developers"), "jobs.read", bad, CONTEXT)).allowed


@pytest.mark.parametrize("cache_size", [None, 0], ids=["cached", "uncached"])
def test_batch_decisions_match_single_ones(cache_size: int | None) -> None:
    eng = engine(cache_size=cache_size)
    alice = principal("alice", "developers")
    jobs = [job("alice", "a1"), job("bob", "b1"), job(None, "n1"), job("alice", "a2")]
    requests = [PolicyRequest(alice, "jobs.read", j, CONTEXT) for j in jobs]
    assert [d.allowed for d in eng.decide_many(requests)] == [True, False, False, True]
    assert [d.allowed for d in eng.decide_many(requests)] == [eng.decide(r).allowed for r in requests]
    assert eng.decide_many([]) == []


def test_submission_entity_matches_the_schema() -> None:
    body = {
        "submission_id": "mine-1",
        "entrypoint_num_cpus": 1,
        "entrypoint_resources": {"TPU": 1},
        "entrypoint_label_selector": {"zone": "a"},
        "metadata": {"team": "x"},
        "runtime_env": {
            "pip": ["requests"],
            "conda": {"dependencies": ["x"]},
            "env_vars": {"A": "1"},
            "container": {"image": "i"},
            "working_dir": "gcs://_ray_pkg_x.zip",
            "plugin_x": 1,
        },
    }
    decision = decide(engine(), principal("root", "admins"), "jobs.submit", submission("root", **body))
    assert decision.allowed


@pytest.mark.parametrize("cache_size", [None, 0], ids=["cached", "uncached"])
def test_fast_path_decides_exactly_as_the_strict_path(cache_size: int | None) -> None:
    """The fast path leaves out attributes no policy reads, caches principals and decisions; none of it may
    change a decision."""
    from tests.unit.policy.test_default_pack import ESCAPES, PLAIN

    extra = [
        (
            "ops/ctx.cedar",
            '@id("ctx-all")\nforbid (principal in Raywarden::Group::"ctx", action, resource)\n'
            "when { context has source_ip && context.hour_utc >= 0 };\n"
            '@id("ops-status")\npermit (principal in Raywarden::Group::"ops", '
            'action == Raywarden::Action::"jobs.read", resource is Raywarden::Job) '
            'when { resource.status == "RUNNING" };',
        )
    ]
    for eng in (engine(cache_size=cache_size), engine(extra=extra, cache_size=cache_size)):
        people = [
            principal("alice", "developers"),
            principal("vera", "viewers"),
            principal("root", "admins"),
            principal("olga", "ops"),
            principal("carl", "ctx", "admins"),
            principal("ci", "developers", kind="sa"),
        ]
        resources = [job("alice"), job("bob", status="STOPPED"), job(None)]
        resources += [submission("alice", **body) for body in [*PLAIN.values(), *ESCAPES.values()]]
        for who in people:
            for res in resources:
                actions = ["jobs.submit"] if res.type == "NewJob" else ["jobs.read", "jobs.read_env", "jobs.stop"]
                for action in actions:
                    request = PolicyRequest(who, action, res, CONTEXT)
                    assert eng.decide(request) == eng.decide(request, strict=True), (who.id, action, res.attrs)


def test_attribute_references_are_collected_from_the_policies() -> None:
    from raywarden.policy.reads import reads_of

    reads = reads_of(
        [
            {
                "resource": {"op": "All"},
                "conditions": [
                    {"body": {".": {"left": {"Var": "context"}, "attr": "a"}}},
                    {"body": {"has": {"left": {"Var": "resource"}, "attr": "b"}}},
                ],
            }
        ]
    )
    assert reads.names == {"a", "b"} and not reads.whole_context and not reads.resource_identity
    assert reads.context_names == ("a",)  # only fields read from the context itself are given to Cedar
    whole = reads_of([{"conditions": [{"body": {"==": {"left": {"Var": "context"}, "right": {"Record": {}}}}}]}])
    assert whole.whole_context


@pytest.mark.parametrize("cache_size", [None, 0], ids=["cached", "uncached"])
def test_fast_path_decides_as_the_strict_path_for_every_action(cache_size: int | None) -> None:
    """Each action is decided by its own slice of the set, with only what that slice reads; the strict path uses
    every policy and every attribute. Operator policies of every scope shape take part."""
    from raywarden.policy.engine import schema_actions
    from raywarden.policy.entities import request_context
    from tests.unit.policy.policy_support import context_for, resource_for

    extra = [
        (
            "ops/shapes.cedar",
            '@id("office")\nforbid (principal in Raywarden::Group::"developers", action, resource)\n'
            'unless { context.source.isInRange(ip("10.0.0.0/8")) };\n'
            '@id("fresh-stop")\nforbid (principal, action in [Raywarden::Action::"jobs.stop", '
            'Raywarden::Action::"jobs.delete"], resource) when { context.auth_age_s > 3600 };\n'
            '@id("token-reads")\npermit (principal, action in Raywarden::Action::"jobs.read", resource) '
            'when { context.auth_method == "token" && resource has owner && resource.owner == "" };\n'
            '@id("console")\nforbid (principal is Raywarden::ServiceAccount, '
            'action == Raywarden::Action::"console.view", resource);\n'
            "permit (principal, action, resource) when { context.hour_utc == 25 };",
        )
    ]
    contexts = [request_context("certificate", "10.1.2.3", 60), request_context("token", "192.0.2.1", 7200)]
    people = [
        principal("alice", "developers"),
        principal("vera", "viewers"),
        principal("root", "admins"),
        principal("ci", "developers", kind="sa"),
        principal("nobody"),
    ]
    job_actions = {"jobs.read", "jobs.read_env", "jobs.logs", "jobs.logs_tail", "jobs.stop", "jobs.delete"}
    for eng in (engine(cache_size=cache_size), engine(extra=extra, cache_size=cache_size)):
        for action in sorted(schema_actions()):
            for who in people:
                for owner in ("alice", None):
                    for context in contexts:
                        on_job = action in job_actions or action in ("jobs.submit", "packages.read", "packages.upload")
                        on_job = on_job or action.startswith("serve.")
                        resource = resource_for(action, owner) if on_job else Entity("Cluster", CLUSTER_ID)
                        request = PolicyRequest(who, action, resource, context_for(action, context))
                        assert eng.decide(request) == eng.decide(request, strict=True), (who.id, action, owner)


def test_each_action_is_asked_of_the_policies_whose_scope_admits_it() -> None:
    from raywarden.policy.reads import action_scope as _action_scope

    eng = engine()
    sizes = {action: len(part.policies) for action, part in eng._pruned._slices.items()}
    assert sizes["jobs.read"] == 3  # admins-all, developers-own-jobs, viewers-read
    assert sizes["jobs.submit"] == 2  # admins-all, developers-submit
    assert all(size >= 1 for size in sizes.values())  # admins-all admits every action
    # What the slice reads is all a decision on that action parses: jobs.read needs the owner, not the context.
    reads = eng._pruned.slice("jobs.read").reads
    assert "owner" in reads.names and "auth_method" not in reads.names
    action = {"type": "Raywarden::Action", "id": "a"}
    assert _action_scope({"action": {"op": "All"}}) is None
    assert _action_scope({"action": {"op": "==", "entity": action}}) == {"a"}
    assert _action_scope({"action": {"op": "in", "entities": [action, {**action, "id": "b"}]}}) == {"a", "b"}
    assert _action_scope({"action": {"op": "in", "entity": {"__entity": action}}}) == {"a"}
    assert _action_scope({"action": {"op": "==", "entity": {"type": "Other", "id": "a"}}}) is None
    assert _action_scope({"action": {"op": "==", "slot": "?action"}}) is None


@pytest.mark.parametrize("cache_size", [None, 0], ids=["cached", "uncached"])
def test_two_jobs_with_one_id_are_decided_apart(cache_size: int | None) -> None:
    """A submission id chosen equal to another job's id: one entity set would decide both with one owner."""
    eng = engine(cache_size=cache_size)
    alice = principal("alice", "developers")
    mine, theirs = job("alice", "same-id"), job("bob", "same-id")
    requests = [PolicyRequest(alice, "jobs.read", j, CONTEXT) for j in (mine, theirs, mine, theirs)]
    assert [d.allowed for d in eng.decide_many(requests)] == [True, False, True, False]
    assert [read.allowed for (read,) in eng.decide_each(alice, CONTEXT, ["jobs.read"], [theirs, mine])] == [False, True]


def test_a_principal_that_is_also_the_resource_is_never_cached() -> None:
    eng = engine()
    alice = principal("alice", "admins")
    same = Entity(alice.type, alice.id, {"other": "attributes"}, ())
    decision = eng.decide(PolicyRequest(alice, "jobs.read", same, CONTEXT))
    assert not decision.allowed and "two different entities" in decision.errors[0]
    assert eng.decide(PolicyRequest(alice, "cluster.version", Entity("Cluster", CLUSTER_ID), CONTEXT)).allowed
    assert len(eng.cache) == 1


@pytest.mark.parametrize(
    ("policy", "identity", "types"),
    [
        ("permit (principal, action, resource is Raywarden::Job);", False, set()),
        ('permit (principal, action, resource in Raywarden::Cluster::"ray");', False, {"Cluster"}),
        ('permit (principal, action, resource == Raywarden::Job::"x");', False, {"Job"}),
        ('permit (principal, action, resource is Raywarden::Job in Raywarden::Cluster::"ray");', False, {"Cluster"}),
        ('permit (principal, action, resource) when { resource in Raywarden::Cluster::"ray" };', False, {"Cluster"}),
        ('permit (principal, action, resource) when { Raywarden::Job::"x" != resource };', False, {"Job"}),
        ('permit (principal, action, resource) when { Raywarden::Job::"x" in resource };', True, {"Job"}),
        ("permit (principal, action, resource) when { resource in principal };", True, set()),
        ("permit (principal, action, resource) when { [resource].isEmpty() };", True, set()),
        ('permit (principal, action, resource) when { resource.owner == "" };', False, set()),
    ],
)
def test_what_tells_a_resource_by_its_id(policy: str, identity: bool, types: set[str]) -> None:
    """A resource is keyed by its id when a policy can tell it from another with the same attributes and groups:
    by using it other than by attribute or type, or by naming an entity of its type."""
    import json

    import cedarpy

    from raywarden.policy.reads import reads_of

    est = json.loads(cedarpy.policies_to_json_str(policy))["staticPolicies"]["policy0"]
    reads = reads_of([est])
    assert reads.resource_identity is identity
    assert reads.literal_types == types


def test_values_no_key_can_hold_are_decided_by_cedar_every_time() -> None:
    """A list of groups instead of a tuple, a set in an attribute: not what the gateway builds, still decided."""
    eng, uncached = engine(), engine(cache_size=0)
    listed = Entity("User", principal("alice").id, principal("alice").attrs, [("Group", "developers")])  # type: ignore[arg-type]
    odd_job = Entity("Job", "j", {**job("alice").attrs, "owner": {1, 2}}, (("Cluster", CLUSTER_ID),))
    for who, res in ((listed, job("alice")), (principal("alice", "developers"), odd_job)):
        request = PolicyRequest(who, "jobs.read", res, CONTEXT)
        single = eng.decide(request)
        assert single == eng.decide(request) == uncached.decide(request)
        assert eng.decide_many([request, request]) == [single, single]
        assert eng.decide_each(who, CONTEXT, ["jobs.read"], [res]) == [(single,)]
    assert len(eng.cache) == 0
