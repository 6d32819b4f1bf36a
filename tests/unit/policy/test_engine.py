"""The policy decision point: the first pack (admins may do everything, nobody else anything)."""

from __future__ import annotations

import pytest

from raywarden.errors import PolicyError
from raywarden.gateway.routes import ACTIONS
from raywarden.policy.engine import (
    CLUSTER_ID,
    Entity,
    PolicyEngine,
    PolicyRequest,
    default_policy_files,
    shipped_schema,
)

pytestmark = pytest.mark.unit
CONTEXT = {"auth_method": "certificate", "source_ip": "127.0.0.1"}


def _user(groups: tuple[str, ...]) -> Entity:
    return Entity("User", "spiffe://td/user/alice", {"name": "alice"}, tuple(("Group", g) for g in groups))


def _resource(action: str) -> Entity:
    if action in ("cluster.version", "jobs.list"):
        return Entity("Cluster", CLUSTER_ID)
    if action.startswith("packages."):
        return Entity("Package", "_ray_pkg_1.zip", {"name": "_ray_pkg_1.zip"}, (("Cluster", CLUSTER_ID),))
    return Entity("Job", "raysubmit_1", {"job_id": "raysubmit_1"}, (("Cluster", CLUSTER_ID),))


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_admins_may_do_everything_and_others_nothing(action: str) -> None:
    engine = PolicyEngine.load()
    allowed = engine.decide(PolicyRequest(_user(("admins",)), action, _resource(action), CONTEXT))
    assert allowed.allowed and allowed.policy_ids == ("admins-all",)
    denied = engine.decide(PolicyRequest(_user(("developers",)), action, _resource(action), CONTEXT))
    assert not denied.allowed and denied.policy_ids == ()


def test_every_route_action_is_in_the_schema() -> None:
    schema = shipped_schema()
    for action in ACTIONS:
        assert f'"{action}"' in schema


def test_invalid_policy_is_refused_whole() -> None:
    bad = 'permit(principal, action == Raywarden::Action::"nope", resource);'
    files = [*default_policy_files(), ("bad.cedar", bad)]
    with pytest.raises(PolicyError, match="does not match the schema"):
        PolicyEngine.from_sources(files)
    with pytest.raises(PolicyError, match=r"bad\.cedar"):
        PolicyEngine.from_sources([("bad.cedar", "permit(")])
    with pytest.raises(PolicyError, match="empty"):
        PolicyEngine.from_sources([])


def test_forbid_wins() -> None:
    files = [*default_policy_files(), ("no-delete.cedar",
             '@id("no-delete")\nforbid(principal, action == Raywarden::Action::"jobs.delete", resource);')]
    engine = PolicyEngine.from_sources(files)
    decision = engine.decide(PolicyRequest(_user(("admins",)), "jobs.delete", _resource("jobs.delete"), CONTEXT))
    assert not decision.allowed and decision.policy_ids == ("no-delete",)
    assert engine.version != PolicyEngine.load().version
