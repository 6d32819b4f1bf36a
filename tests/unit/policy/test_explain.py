"""A refusal explains itself: the action, the resource, the permits that could have applied, which of their
conditions Cedar found false, and the offending values."""

from __future__ import annotations

import json

import cedarpy
import pytest

from raywarden.policy.cedartext import expression
from raywarden.policy.engine import CLUSTER_ID, Entity, PolicyRequest
from raywarden.policy.entities import request_context
from tests.unit.policy.policy_support import CONTEXT, engine, job, principal, submission
from tests.unit.policy.test_default_pack import ESCAPES

pytestmark = pytest.mark.unit
ENGINE = engine()
ALICE = principal("alice", "developers")


def explain(who: Entity, action: str, resource: Entity, context: dict[str, object] | None = None) -> str:
    return ENGINE.explain(PolicyRequest(who, action, resource, context or CONTEXT)).summary()


@pytest.mark.parametrize(
    ("body", "facts"),
    [
        ({"runtime_env": {"pip": ["--index-url https://evil/simple", "torch"]}}, ["pip_option:--index-url"]),
        ({"runtime_env": {"env_vars": {"PIP_INDEX_URL": "https://evil"}}}, ["env_var_prefixes", "PIP"]),
        ({"entrypoint_num_cpus": 8}, ["entrypoint_milli_cpus 8000 > 4000"]),
        ({"entrypoint_num_gpus": 1}, ["entrypoint_milli_gpus 1000 > 0"]),
        ({"runtime_env": {"container": {"image": "evil"}}}, ["container", "key:container"]),
        ({"entrypoint_resources": {"TPU": 1}}, ["entrypoint_resources not in resources: TPU"]),
    ],
)
def test_a_refused_submission_names_the_offending_facts(body: dict[str, object], facts: list[str]) -> None:
    summary = explain(ALICE, "jobs.submit", submission("alice", **body))
    assert summary.startswith('jobs.submit on NewJob "(new)" refused: no policy permits it; developers-submit')
    for fact in facts:
        assert fact in summary


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_every_runtime_env_escape_is_explained_by_a_value(name: str) -> None:
    """Each refused escape names at least one failed condition of developers-submit, with what failed."""
    found = ENGINE.explain(PolicyRequest(ALICE, "jobs.submit", submission("alice", **ESCAPES[name]), CONTEXT))
    assert not found.decision.allowed
    (candidate,) = found.candidates
    assert candidate.id == "developers-submit" and candidate.where == "default/developers.cedar:36"
    assert candidate.failed and all(c.detail for c in candidate.failed), candidate.failed


def test_the_explanation_decides_as_the_gateway() -> None:
    for who in (ALICE, principal("vera", "viewers"), principal("root", "admins"), principal("nobody")):
        for action, resource in (
            ("jobs.stop", job("bob")),
            ("jobs.read", job("alice")),
            ("jobs.submit", submission("x")),
        ):
            request = PolicyRequest(who, action, resource, CONTEXT)
            assert ENGINE.explain(request).decision == ENGINE.decide(request)


def test_someone_elses_job() -> None:
    found = ENGINE.explain(PolicyRequest(ALICE, "jobs.stop", job("bob"), CONTEXT))
    (candidate,) = found.candidates
    assert [c.outcome for c in candidate.conditions] == ["held", "failed"]
    assert candidate.failed[0].detail == 'owner "spiffe://td.test/user/bob" != "spiffe://td.test/user/alice"'
    assert found.summary().startswith(
        'jobs.stop on Job "raysubmit_1" refused: no policy permits it; developers-own-jobs'
    )


def test_no_permit_admits_the_principal() -> None:
    summary = explain(principal("nobody"), "console.admin", Entity("Cluster", CLUSTER_ID))
    assert summary == (
        'console.admin on Cluster "ray" refused: no permit for console.admin admits User "spiffe://td.test/user/nobody"'
        ' (admins-all needs principal in Raywarden::Group::"admins")'
    )


def test_allowed_and_forbidden_name_their_policies_and_where() -> None:
    assert explain(ALICE, "jobs.read", job("alice")) == (
        'jobs.read on Job "raysubmit_1" allowed by developers-own-jobs (default/developers.cedar:19)'
    )
    ops = engine(
        extra=[
            (
                "ops/stop.cedar",
                '// no tokens\n\n@id("no-token-stop")\nforbid (principal, action, resource)\n'
                'when { context.auth_method == "token" };',
            )
        ]
    )
    found = ops.explain(
        PolicyRequest(principal("root", "admins"), "jobs.stop", job("bob"), request_context("token", "::1", 5))
    )
    assert found.summary() == 'jobs.stop on Job "raysubmit_1" refused: forbidden by no-token-stop (ops/stop.cedar:3)'


def test_operator_policies_are_explained_condition_by_condition() -> None:
    extra = (
        '@id("fresh-running")\npermit (principal in Raywarden::Group::"ops",\n'
        '  action == Raywarden::Action::"jobs.stop", resource is Raywarden::Job)\n'
        'when { context.auth_age_s < 600 && resource.status == "RUNNING" &&\n'
        "  (context.hour_utc < 8 || context.hour_utc > 18) }\n"
        'unless { context.auth_method == "token" || resource.owner == "" };'
    )
    eng = engine(extra=[("ops/fresh.cedar", extra)])
    request = PolicyRequest(
        principal("olga", "ops"), "jobs.stop", job("bob", status="STOPPED"), request_context("token", "::1", 7200)
    )
    (candidate,) = eng.explain(request).candidates
    outcomes = [(c.kind, c.text, c.outcome, c.detail) for c in candidate.conditions]
    assert outcomes[0] == ("when", "context.auth_age_s < 600", "failed", "auth_age_s 7200 >= 600")
    assert outcomes[1] == ("when", 'resource.status == "RUNNING"', "failed", 'status "STOPPED" != "RUNNING"')
    assert outcomes[2][1] == "context.hour_utc < 8 || context.hour_utc > 18"  # one conjunct, as written
    assert outcomes[3] == ("unless", 'context.auth_method == "token"', "failed", "")
    assert outcomes[4] == ("unless", 'resource.owner == ""', "held", "")
    assert candidate.where == "ops/fresh.cedar:1"


def test_a_guarded_condition_after_a_failed_guard_is_not_reached() -> None:
    extra = (
        '@id("small-gpus")\npermit (principal in Raywarden::Group::"gpu", action == Raywarden::Action::"jobs.submit",'
        " resource is Raywarden::NewJob)\n"
        "when { resource has entrypoint_milli_gpus && resource.entrypoint_milli_gpus <= 1000 };"
    )
    eng = engine(extra=[("ops/gpu.cedar", extra)])
    found = eng.explain(PolicyRequest(principal("g", "gpu"), "jobs.submit", submission("g"), CONTEXT))
    candidate = next(c for c in found.candidates if c.id == "small-gpus")
    assert [c.outcome for c in candidate.conditions] == ["failed", "not reached"]
    assert candidate.conditions[0].detail == "resource has no entrypoint_milli_gpus"


def test_explanations_serialise() -> None:
    found = ENGINE.explain(PolicyRequest(ALICE, "jobs.submit", submission("alice", entrypoint_num_cpus=8), CONTEXT))
    data = found.as_dict()
    assert data["decision"] == "deny" and data["action"] == "jobs.submit" and data["resource"] == "NewJob::(new)"
    assert data["candidates"][0]["conditions"][2]["detail"] == "entrypoint_milli_cpus 8000 > 4000"
    assert data["out_of_scope"][0]["scope_text"] == 'principal in Raywarden::Group::"admins"'


@pytest.mark.parametrize(
    "text",
    [
        "(context.a || context.b) && context.c",
        "!(context.a && context.b)",
        "context.a.b.containsAll([1, 2])",
        "(if context has b then context.b else 0) <= 3",
        'context.source.isInRange(ip("10.0.0.0/8"))',
        '!resource.x.containsAny(["PIP", "UV"])',
        'resource.owner like "spiffe://*/user/\\*"',
        'resource is Raywarden::Job in Raywarden::Cluster::"ray"',
        "1 + 2 * 3 < -4",
        "(1 + 2) * 3 == 9",
        '{a: 1, "b c": [true, false]} == context.r',
        "!!context.a",
        'if context.a then "x" else "y" == context.b',
        "(if context.a then 1 else 2) + 3 > 0",
        'context["odd key"] == principal.name',
    ],
)
def test_conditions_render_as_written(text: str) -> None:
    """Rendering a condition and parsing it again gives the same expression: no parenthesis missing."""

    def body(condition: str) -> object:
        parsed = json.loads(
            cedarpy.policies_to_json_str(f"permit (principal, action, resource) when {{ {condition} }};")
        )
        return parsed["staticPolicies"]["policy0"]["conditions"][0]["body"]

    rendered = expression(body(text))  # type: ignore[arg-type]
    assert body(rendered) == body(text), rendered
