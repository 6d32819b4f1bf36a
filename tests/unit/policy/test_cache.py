"""The decision cache never changes a decision: every answer is Cedar's, keyed on all the policies can read.

Cached engines are compared with engines that ask Cedar every time (``cache_size=0``) and with the strict
path (every policy, every attribute, the schema), over random sequences of requests that share principals,
owners, jobs and contexts, with operator policies that read what the default pack does not: context fields,
the whole context, the resource's id, entity literals, principal attributes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raywarden.policy.cache import DecisionCache, Uncacheable, freeze
from raywarden.policy.engine import CLUSTER_ID, Decision, Entity, PolicyEngine, PolicyRequest, schema_actions
from raywarden.policy.entities import job_entity, package_entity, request_context
from raywarden.policy.jobattrs import OWNER_KEY
from tests.unit.policy.policy_support import (
    engine,
    new_serve_app,
    principal,
    serve_app,
    serve_call_context,
    spiffe,
    submission,
)

pytestmark = pytest.mark.unit

OPERATOR_POLICIES = {
    "context field": '@id("no-stop-by-token")\nforbid (principal, action == Raywarden::Action::"jobs.stop", resource)\n'
    'when { context.auth_method == "token" };',
    "source range": '@id("office-only")\nforbid (principal in Raywarden::Group::"developers", action, resource)\n'
    'unless { context.source.isInRange(ip("10.0.0.0/8")) || context.source.isLoopback() };',
    # Equal to one whole context that the random requests can produce (token, 10.1.2.3, 60 s, 03:00 UTC).
    "whole context": '@id("whole-context")\npermit (principal in Raywarden::Group::"ctx", '
    'action == Raywarden::Action::"jobs.read", resource) when { context == {auth_method: "token", '
    'source_ip: "10.1.2.3", source: ip("10.1.2.3"), auth_age_s: 60, time: 1767582000, hour_utc: 3, weekday_utc: 0} };',
    "resource id": '@id("special-job")\npermit (principal, action == Raywarden::Action::"jobs.read", '
    'resource == Raywarden::Job::"raysubmit_special");',
    "resource id in a condition": '@id("special-env")\npermit (principal in Raywarden::Group::"refs", '
    'action == Raywarden::Action::"jobs.read_env", resource) when { resource == Raywarden::Job::"raysubmit_2" };',
    "job literal": '@id("ref-job")\npermit (principal in Raywarden::Group::"refs", '
    'action == Raywarden::Action::"jobs.logs", resource) '
    'when { Raywarden::Job::"raysubmit_2".owner == principal.spiffe_id };',
    "resource in": '@id("ops-stop")\npermit (principal in Raywarden::Group::"ops", '
    'action == Raywarden::Action::"jobs.stop", resource in Raywarden::Cluster::"ray") '
    'when { resource.status == "RUNNING" };',
    "principal attribute": '@id("named-delete")\npermit (principal, action == Raywarden::Action::"jobs.delete", '
    'resource is Raywarden::Job) when { principal.name == "root2" && resource.entrypoint like "python*" };',
    "late hours": '@id("late")\nforbid (principal in Raywarden::Group::"viewers", action, resource) '
    "when { context.hour_utc >= 22 };",
    "owner set": '@id("owner-set")\npermit (principal in Raywarden::Group::"ops", '
    'action in [Raywarden::Action::"jobs.logs", Raywarden::Action::"jobs.read_env"], resource is Raywarden::Job) '
    'when { ["spiffe://td.test/user/bob", ""].contains(resource.owner) };',
    "submission facts": '@id("ci-mirror")\npermit (principal is Raywarden::ServiceAccount, '
    'action == Raywarden::Action::"jobs.submit", resource is Raywarden::NewJob) '
    'when { resource.runtime_env_facts.contains("pip_option:--index-url") && resource.entrypoint_milli_cpus <= 2000 };',
}
ALL_OPERATOR_POLICIES = [("ops/all.cedar", "\n".join(OPERATOR_POLICIES.values()))]
JOB_ACTIONS = ("jobs.read", "jobs.read_env", "jobs.logs", "jobs.logs_tail", "jobs.stop", "jobs.delete")
BODIES = [
    {},
    {"entrypoint_num_cpus": 2},
    {"entrypoint_num_cpus": 8},
    {"runtime_env": {"pip": ["--index-url https://mirror/simple", "torch"]}},
    {"runtime_env": {"pip": ["requests"], "env_vars": {"PIP_INDEX_URL": "x"}}},
    {"runtime_env": {"working_dir": "gcs://_ray_pkg_a.zip"}, "entrypoint_num_gpus": 1},
]


SERVE_CONFIGS = [
    {},
    {"deployments": [{"name": "Model", "ray_actor_options": {"num_cpus": 8}}]},
    {"runtime_env": {"env_vars": {"RAY_SERVE_X": "1"}}},
]


def ray_job(job_id: str, owner: str | None, status: str, entrypoint: str) -> Entity:
    metadata = {OWNER_KEY: spiffe(owner)} if owner else {}
    info = {"submission_id": job_id, "job_id": "02000000", "status": status, "entrypoint": entrypoint}
    return job_entity(job_id, {**info, "type": "SUBMISSION", "metadata": metadata})


# Few principals and few job shapes, so that random sequences repeat keys: where the cache could be wrong.
people = st.sampled_from(
    [
        principal("alice", "developers"),
        principal("alice", "developers", "refs"),
        principal("bob", "developers", "ops"),
        principal("root2", "admins"),
        principal("root2"),
        principal("vera", "viewers", "ctx"),
        principal("ci", "developers", kind="sa"),
        principal("ci", "ops", kind="sa"),
    ]
)
jobs = st.builds(
    ray_job,
    st.sampled_from(["raysubmit_1", "raysubmit_2", "raysubmit_special"]),
    st.sampled_from(["alice", "bob", None]),
    st.sampled_from(["RUNNING", "STOPPED"]),
    st.just("python x.py") | st.just("bash run.sh"),
)
contexts = st.builds(
    lambda method, source, age, hour: request_context(
        method, source, age, dt.datetime(2026, 1, 5, hour, tzinfo=dt.timezone.utc)
    ),
    st.sampled_from(["certificate", "token", "oidc"]),
    st.sampled_from(["10.1.2.3", "192.0.2.1", "127.0.0.1"]),
    st.sampled_from([60, 9000]),
    st.sampled_from([3, 23]),
)


@st.composite
def requests(draw: st.DrawFn) -> PolicyRequest:
    # Job actions twice as often: most operator policies here are about them.
    action = draw(st.sampled_from(JOB_ACTIONS) | st.sampled_from(sorted(schema_actions())))
    who = draw(people)
    resource: Entity
    if action in JOB_ACTIONS:
        resource = draw(jobs)
    elif action == "jobs.submit":
        resource = submission(who.attrs["name"], **draw(st.sampled_from(BODIES)))
    elif action.startswith("packages."):
        resource = package_entity(draw(st.sampled_from(["_ray_pkg_a.zip", "_ray_pkg_b.zip"])))
    elif action == "serve.deploy":
        resource = new_serve_app(draw(st.sampled_from(["alice", "bob"])), **draw(st.sampled_from(SERVE_CONFIGS)))
    elif action.startswith("serve."):
        owner = draw(st.sampled_from(["alice", "ci", None]))
        resource = serve_app(owner, draw(st.sampled_from([(), ("ops",), ("developers", "viewers")])))
    else:
        resource = Entity("Cluster", CLUSTER_ID)
    context = draw(contexts)
    if action == "serve.invoke":
        context = serve_call_context(draw(st.sampled_from([None, ("llm",), ("other",)])), context)
    return PolicyRequest(who, action, resource, context)


CACHED = engine(extra=ALL_OPERATOR_POLICIES)
UNCACHED = engine(extra=ALL_OPERATOR_POLICIES, cache_size=0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=25))
def test_cached_decisions_are_cedars_own(sequence: list[PolicyRequest]) -> None:
    for request in sequence:
        expected = UNCACHED.decide(request)
        assert CACHED.decide(request) == expected, request
        strict = UNCACHED.decide(request, strict=True)
        assert (strict.allowed, strict.policy_ids) == (expected.allowed, expected.policy_ids), request
    assert CACHED.decide_many(sequence) == [UNCACHED.decide(r) for r in sequence]


def test_the_random_sequences_hit_the_cache() -> None:
    """The comparison above means something only if the cached engine answered from its cache."""
    assert CACHED.cache.hits > 100 and len(CACHED.cache) > 10


_subset_engines: dict[frozenset[str], tuple[PolicyEngine, PolicyEngine]] = {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(st.sampled_from(sorted(OPERATOR_POLICIES)), max_size=3), st.lists(requests(), min_size=1, max_size=20))
def test_each_kind_of_read_is_keyed(chosen: set[str], sequence: list[PolicyRequest]) -> None:
    """Each operator policy alone with the pack: a slice whose only unusual read is that one."""
    key = frozenset(chosen)
    if key not in _subset_engines:
        files = [(f"ops/{name}.cedar", OPERATOR_POLICIES[name]) for name in sorted(chosen)]
        _subset_engines[key] = (engine(extra=files), engine(extra=files, cache_size=0))
    cached, uncached = _subset_engines[key]
    for request in sequence * 2:  # the second time round, answered from the cache
        assert cached.decide(request) == uncached.decide(request), request


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=20))
def test_a_reload_starts_from_an_empty_cache(sequence: list[PolicyRequest]) -> None:
    before = engine()
    for request in sequence:
        before.decide(request)
    after = engine(extra=ALL_OPERATOR_POLICIES)  # what SIGHUP builds: a new engine from the new files
    assert len(after.cache) == 0 and after.version != before.version
    for request in sequence:
        assert after.decide(request) == UNCACHED.decide(request)


def test_a_reload_changes_a_cached_answer() -> None:
    alice, bobs_job = principal("alice", "developers"), ray_job("raysubmit_1", "bob", "RUNNING", "python x.py")
    request = PolicyRequest(alice, "jobs.read", bobs_job, request_context("certificate", "10.1.2.3", 60))
    before = engine()
    assert not before.decide(request).allowed and not before.decide(request).allowed  # the second from the cache
    assert before.cache.hits == 1
    widened = (
        '@id("read-all")\npermit (principal in Raywarden::Group::"developers", action, resource is Raywarden::Job);'
    )
    after = engine(extra=[("ops/read.cedar", widened)])
    assert after.decide(request) == Decision(True, ("read-all",))


def test_context_fields_a_policy_reads_take_part_in_the_key() -> None:
    eng = engine(extra=[("ops/token.cedar", OPERATOR_POLICIES["context field"])])
    root, job = principal("root", "admins"), ray_job("raysubmit_1", "bob", "RUNNING", "python x.py")
    by_certificate = PolicyRequest(root, "jobs.stop", job, request_context("certificate", "10.1.2.3", 60))
    by_token = PolicyRequest(root, "jobs.stop", job, request_context("token", "10.1.2.3", 60))
    assert eng.decide(by_certificate).allowed
    assert eng.decide(by_token) == Decision(False, ("no-stop-by-token",))
    # Fields no policy reads do not: another source address and age are answered from the cache.
    hits = eng.cache.hits
    assert eng.decide(PolicyRequest(root, "jobs.stop", job, request_context("certificate", "192.0.2.9", 7))).allowed
    assert eng.cache.hits == hits + 1


def test_a_policy_that_reads_the_whole_context_keys_on_all_of_it() -> None:
    eng = engine(extra=[("ops/whole.cedar", OPERATOR_POLICIES["whole context"])])
    carl, job = principal("carl", "ctx"), ray_job("raysubmit_1", "bob", "RUNNING", "python x.py")
    at_three = dt.datetime(2026, 1, 5, 3, tzinfo=dt.timezone.utc)
    assert eng.decide(PolicyRequest(carl, "jobs.read", job, request_context("token", "10.1.2.3", 60, at_three))).allowed
    for other in (
        request_context("token", "10.1.2.3", 61, at_three),
        request_context("oidc", "10.1.2.3", 60, at_three),
        request_context("token", "10.1.2.3", 60, at_three + dt.timedelta(seconds=1)),
    ):
        assert not eng.decide(PolicyRequest(carl, "jobs.read", job, other)).allowed


def test_a_policy_that_names_the_resource_keys_it_by_id() -> None:
    eng = engine(extra=[("ops/ids.cedar", OPERATOR_POLICIES["resource id"] + "\n" + OPERATOR_POLICIES["job literal"])])
    context = request_context("certificate", "10.1.2.3", 60)
    bob = principal("bob", "viewers")
    special, plain = (ray_job(i, "alice", "RUNNING", "python x.py") for i in ("raysubmit_special", "raysubmit_1"))
    assert eng.decide(PolicyRequest(principal("bob"), "jobs.read", special, context)).allowed
    assert not eng.decide(PolicyRequest(principal("bob"), "jobs.read", plain, context)).allowed
    # An entity literal of the resource's type: the decision reads that job's owner only when it is the resource.
    referee = principal("alice", "refs")
    second, first = (ray_job(i, "alice", "RUNNING", "python x.py") for i in ("raysubmit_2", "raysubmit_1"))
    assert eng.decide(PolicyRequest(referee, "jobs.logs", second, context)).allowed
    refused = eng.decide(PolicyRequest(referee, "jobs.logs", first, context))
    assert not refused.allowed and refused.errors  # Cedar: that job is not in the entities it was given
    assert eng.decide(PolicyRequest(bob, "jobs.read", plain, context)).allowed
    # The same named in a condition rather than the scope.
    eng = engine(extra=[("ops/env.cedar", OPERATOR_POLICIES["resource id in a condition"])])
    assert eng.decide(PolicyRequest(referee, "jobs.read_env", second, context)).allowed
    assert not eng.decide(PolicyRequest(referee, "jobs.read_env", first, context)).allowed


def test_jobs_read_depends_on_owner_and_groups_only() -> None:
    eng = engine()
    alice = principal("alice", "developers")
    context = request_context("certificate", "10.1.2.3", 60)
    first = ray_job("raysubmit_1", "alice", "RUNNING", "python a.py")
    other = ray_job("raysubmit_9", "alice", "STOPPED", "bash b.sh")
    assert eng.decide(PolicyRequest(alice, "jobs.read", first, context)).allowed
    assert eng.decide(PolicyRequest(alice, "jobs.read", other, request_context("token", "192.0.2.1", 9))).allowed
    assert (eng.cache.hits, eng.cache.misses) == (1, 1)
    # Another owner, or the same owner seen by someone in other groups, is another key.
    assert not eng.decide(
        PolicyRequest(alice, "jobs.read", ray_job("raysubmit_1", "bob", "RUNNING", "x"), context)
    ).allowed
    assert eng.decide(PolicyRequest(principal("alice", "viewers"), "jobs.read", first, context)).allowed
    assert eng.cache.misses == 3


def test_a_per_job_view_asks_cedar_once_per_owner() -> None:
    eng = engine()
    alice = principal("alice", "developers")
    context = request_context("certificate", "10.1.2.3", 60)
    listed = [ray_job(f"raysubmit_{i}", ["alice", "bob", None][i % 3], "RUNNING", f"python {i}.py") for i in range(300)]
    first = eng.decide_each(alice, context, ("jobs.read", "jobs.read_env"), listed)
    assert len(eng.cache) == 6  # three owners, two actions
    assert eng.decide_each(alice, context, ("jobs.read", "jobs.read_env"), listed) == first
    assert eng.cache.hits == 600
    expected = [(d.allowed, e.allowed) for d, e in first]
    assert expected == [(i % 3 == 0, i % 3 == 0) for i in range(300)]
    # One key whichever way a decision is asked: a single decide is a hit after the list.
    assert eng.decide(PolicyRequest(alice, "jobs.read", listed[7], context)) == first[7][0]
    assert eng.cache.hits == 601
    batch = [PolicyRequest(alice, a, job, context) for job in listed for a in ("jobs.read", "jobs.read_env")]
    assert eng.decide_many(batch) == [d for pair in first for d in pair]
    assert UNCACHED.decide_many(batch) == [UNCACHED.decide(r) for r in batch]


def test_an_entity_reference_in_a_value_is_never_cached() -> None:
    eng = engine()
    job = ray_job("raysubmit_1", "alice", "RUNNING", "python x.py")
    odd = Entity("Job", "raysubmit_1", {**job.attrs, "owner": {"__entity": {"type": "Raywarden::User", "id": "x"}}})
    request = PolicyRequest(
        principal("alice", "developers"), "jobs.read", odd, request_context("certificate", "::1", 1)
    )
    assert not eng.decide(request).allowed
    assert len(eng.cache) == 0
    with pytest.raises(Uncacheable):
        freeze({"__entity": {"type": "T", "id": "x"}})


@pytest.mark.parametrize(
    ("one", "other"),
    [(True, 1), (1, 1.0), ([1, 2], {"a": 1}), ("1", 1), ([], {}), ({"a": [1]}, {"a": [True]}), ("x", ["x"])],
)
def test_values_cedar_tells_apart_freeze_apart(one: Any, other: Any) -> None:
    assert freeze(one) != freeze(other)
    assert freeze({"k": one}) == freeze({"k": one})


def test_the_cache_is_bounded_by_entries_and_by_weight() -> None:
    cache = DecisionCache(max_entries=8, max_weight=10**9)
    decision = Decision(True, ("p",))
    for i in range(100):
        cache.put(("key", i), decision)
        assert len(cache) <= 8
    assert cache.get(("key", 92)) == decision and cache.get(("key", 91)) is None
    cache.put(("key", 100), decision)  # evicts the least recently used: 93, not 92 which was just read
    assert cache.get(("key", 92)) == decision and cache.get(("key", 93)) is None
    heavy = DecisionCache(max_entries=10**6, max_weight=64 * 1024)
    for i in range(1000):
        heavy.put(("k", "x" * 500, i), decision)
        assert heavy.weight <= 64 * 1024
    assert 0 < len(heavy) < 1000
    heavy.put(("huge", "x" * 2000), decision)  # more than 1/64 of the weight: never stored
    assert heavy.get(("huge", "x" * 2000)) is None
    assert len(DecisionCache(max_entries=0)) == 0


def test_an_engine_keeps_at_most_its_cache_size() -> None:
    small = engine(cache_size=16)
    alice = principal("alice", "developers")
    context = request_context("certificate", "10.1.2.3", 60)
    for i in range(200):
        owner = f"user{i}" if i % 2 else "alice"
        decision = small.decide(
            PolicyRequest(alice, "jobs.read", ray_job(f"raysubmit_{i}", owner, "RUNNING", "x"), context)
        )
        assert decision.allowed is (owner == "alice")
        assert len(small.cache) <= 16


def test_every_attribute_a_policy_names_takes_part_in_the_key() -> None:
    """The same principal id with another spiffe_id (which developers-own-jobs compares with the owner)."""
    eng = engine()
    alice = principal("alice", "developers")
    other = Entity(alice.type, alice.id, {**alice.attrs, "spiffe_id": spiffe("bob")}, alice.parents)
    job = ray_job("raysubmit_1", "alice", "RUNNING", "python x.py")
    context = request_context("certificate", "10.1.2.3", 60)
    assert eng.decide(PolicyRequest(alice, "jobs.read", job, context)).allowed
    assert not eng.decide(PolicyRequest(other, "jobs.read", job, context)).allowed
    assert [d for (d,) in eng.decide_each(other, context, ["jobs.read"], [job])] == [Decision(False, ())]
