"""The schema and the route table cannot drift apart; the shipped pack validates against the schema."""

from __future__ import annotations

import pytest

from raywarden.gateway.routes import ACTIONS, ROUTES
from raywarden.policy.engine import PolicyEngine, schema_actions, shipped_schema

pytestmark = pytest.mark.unit
# Actions asked by the gateway itself while filtering responses, not by a route, and the Serve listener's.
RESPONSE_ACTIONS = frozenset({"jobs.read_env", "serve.read_env", "serve.invoke"})


def test_every_route_action_is_declared_and_every_declared_action_is_routed() -> None:
    declared = schema_actions()
    identity_actions = {r.action for r in ROUTES if r.auth == "identity"}
    assert identity_actions == set(ACTIONS)
    assert identity_actions - declared == set(), "routes whose action the schema does not declare"
    assert declared - identity_actions - RESPONSE_ACTIONS == set(), "schema actions no route uses"


def test_schema_action_parser_sees_grouped_declarations() -> None:
    text = 'namespace N { action "a", "b" appliesTo { principal: [U], resource: [R] }; action "c"; }'
    assert schema_actions(text) == {"a", "b", "c"}
    assert {"jobs.read", "jobs.stop", "jobs.delete"} <= schema_actions(shipped_schema())


def test_job_routes_are_the_jobs_api_actions_on_one_job() -> None:
    # A refusal on a "job" route reads like a missing job (gateway/authz.py): exactly these actions.
    job_routes = {r.action for r in ROUTES if r.resource == "job"}
    assert job_routes == {"jobs.read", "jobs.logs", "jobs.logs_tail", "jobs.stop", "jobs.delete"}


def test_shipped_pack_loads_and_every_policy_has_an_id() -> None:
    engine = PolicyEngine.load()
    ids = [p.id for p in engine.policies]
    assert {"admins-all", "developers-client", "developers-own-jobs", "developers-submit", "viewers-read"} <= set(ids)
    assert {"serve-invoke-owner", "serve-invoke-groups", "serve-api-key-scope", "serve-deploy-developers"} <= set(ids)
    assert all("#" not in i for i in ids), "shipped policies carry @id annotations"
    assert len(ids) == len(set(ids))


def test_schema_declares_no_action_groups() -> None:
    """The engine asks each action only the policies whose scope names it (engine._action_scope); with action
    groups, ``action in GROUP`` would admit the group's members too."""
    import re

    text = re.sub(r"//[^\n]*", "", shipped_schema())
    assert not re.search(r"\baction\s+(\"[^\"]+\"\s*,\s*)*\"[^\"]+\"\s+in\b", text)
    assert not re.search(r"\bmemberOf\b", text)
