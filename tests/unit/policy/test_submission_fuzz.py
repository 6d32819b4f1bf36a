"""Property tests: whatever a submission body holds, the model either refuses it with a message, or the attribute
builders turn it into entities that match the schema and that Cedar decides without an error."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from raywarden.gateway.jobs import MAX_AMOUNT, MAX_MEMORY_BYTES, JobSubmitBody
from raywarden.policy.engine import PolicyRequest
from raywarden.policy.entities import new_job_entity
from raywarden.policy.jobattrs import submission_attrs
from raywarden.policy.runtime_env import RAY_RUNTIME_ENV_FIELDS
from tests.unit.policy.policy_support import CONTEXT, engine, principal, spiffe

pytestmark = pytest.mark.unit

ENGINE = engine()
LONG_MAX = 2**63 - 1
# Text that reaches every branch of the requirement and match-spec readers.
TRICKY = st.lists(
    st.sampled_from([*"abcXYZ019 -_.=<>!~;:@/\\#$[](),'\"*\t\n\r\x0b\x1c\xa0\u2028", ".whl", "://", "--index-url"]),
    max_size=12,
).map("".join)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.just(10**400),
    st.just(-(10**400)),
    st.floats(allow_nan=True, allow_infinity=True),
    TRICKY,
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY, inner, max_size=4), max_leaves=20
)
REQUIREMENTS = st.lists(st.one_of(TRICKY, st.sampled_from(["requests==2.0", "--index-url", "x \\", "# c"])), max_size=6)
INSTALLER = st.one_of(
    REQUIREMENTS,
    TRICKY,
    st.fixed_dictionaries(
        {"packages": st.one_of(REQUIREMENTS, TRICKY)},
        optional={
            "pip_check": JSON,
            "pip_version": st.one_of(TRICKY, JSON),
            "pip_install_options": st.one_of(REQUIREMENTS, JSON),
            "uv_check": JSON,
            "uv_version": TRICKY,
            "uv_pip_install_options": REQUIREMENTS,
            "extra": JSON,
        },
    ),
)
CONDA = st.one_of(
    TRICKY,
    st.fixed_dictionaries(
        {},
        optional={
            "name": JSON,
            "channels": st.one_of(st.lists(TRICKY, max_size=3), JSON),
            "dependencies": st.lists(st.one_of(TRICKY, st.fixed_dictionaries({"pip": REQUIREMENTS}), JSON), max_size=5),
            "variables": JSON,
        },
    ),
)
RUNTIME_ENV = st.fixed_dictionaries(
    {},
    optional={
        "pip": INSTALLER,
        "uv": INSTALLER,
        "conda": CONDA,
        "working_dir": st.one_of(TRICKY, JSON),
        "py_modules": st.one_of(st.lists(TRICKY, max_size=3), JSON),
        "env_vars": st.one_of(st.dictionaries(TRICKY, st.one_of(TRICKY, JSON), max_size=4), JSON),
        "config": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "setup_timeout_seconds": JSON,
                    "eager_install": JSON,
                    "log_files": st.one_of(st.lists(TRICKY, max_size=3), JSON),
                    "other": JSON,
                },
            ),
            JSON,
        ),
        **{field: JSON for field in sorted(RAY_RUNTIME_ENV_FIELDS) if field not in ("pip", "uv", "conda")},
        "a_plugin": JSON,
    },
)
AMOUNT = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2 * MAX_AMOUNT),
    st.integers(min_value=MAX_MEMORY_BYTES - 2, max_value=MAX_MEMORY_BYTES + 2),
    st.just(10**400),
    st.just(10**5000 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    TRICKY,
)
BODY = st.fixed_dictionaries(
    {"entrypoint": st.one_of(st.text(max_size=20), JSON)},
    optional={
        "submission_id": st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True), JSON),
        "runtime_env": st.one_of(RUNTIME_ENV, JSON),
        "metadata": st.one_of(st.dictionaries(TRICKY, TRICKY, max_size=3), JSON),
        "entrypoint_num_cpus": AMOUNT,
        "entrypoint_num_gpus": AMOUNT,
        "entrypoint_memory": AMOUNT,
        "entrypoint_resources": st.one_of(st.dictionaries(TRICKY, AMOUNT, max_size=3), JSON),
        "entrypoint_label_selector": st.one_of(st.dictionaries(TRICKY, TRICKY, max_size=3), JSON),
    },
)
IN_RANGE = st.one_of(st.integers(0, MAX_AMOUNT), st.floats(0, MAX_AMOUNT), st.booleans())
NAME = TRICKY.filter(bool)
# Bodies the model mostly accepts, so that the builders see many of them.
VALID_BODY = st.fixed_dictionaries(
    {"entrypoint": st.text(min_size=1, max_size=20)},
    optional={
        "runtime_env": RUNTIME_ENV,
        "metadata": st.dictionaries(TRICKY, TRICKY, max_size=3),
        "entrypoint_num_cpus": IN_RANGE,
        "entrypoint_num_gpus": IN_RANGE,
        "entrypoint_memory": st.integers(0, MAX_MEMORY_BYTES),
        "entrypoint_resources": st.dictionaries(NAME, IN_RANGE, max_size=3),
        "entrypoint_label_selector": st.dictionaries(NAME, TRICKY, max_size=3),
    },
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(VALID_BODY, BODY))
def test_what_the_model_accepts_builds_entities_cedar_decides(body: dict[str, Any]) -> None:
    try:
        model = JobSubmitBody.model_validate(body)
    except ValidationError as exc:
        assert exc.errors() and exc.errors()[0]["msg"]  # a refusal says which field and why
        event("refused by the model")
        return
    event("accepted by the model")
    entity = new_job_entity(model.model_dump(exclude_none=True), spiffe("alice"))
    attrs = entity.attrs
    for key in (
        "entrypoint_milli_cpus",
        "entrypoint_milli_gpus",
        "entrypoint_memory",
        "entrypoint_resources_max_milli",
    ):
        assert 0 <= attrs.get(key, 0) < LONG_MAX, key  # within the model's bounds nothing is clamped
    for who in (principal("alice", "developers"), principal("root", "admins")):
        # strict: the entity must match the schema, or the engine raises.
        decision = ENGINE.decide(PolicyRequest(who, "jobs.submit", entity, CONTEXT), strict=True)
        assert not decision.errors
    assert ENGINE.decide(PolicyRequest(principal("root", "admins"), "jobs.submit", entity, CONTEXT)).allowed


@FUZZ
@given(BODY)
def test_the_attribute_builders_never_raise_on_any_body(body: dict[str, Any]) -> None:
    """``raywarden policy test`` / ``explain`` build submissions that no model checked: they still get entities
    (odd values count as the largest amounts, odd forms as "unsupported")."""
    attrs = submission_attrs(body, spiffe("alice"))
    assert isinstance(attrs["runtime_env_facts"], list)
    assert all(isinstance(v, int) and 0 <= v <= LONG_MAX for k, v in attrs.items() if k.startswith("entrypoint_m"))
    entity = new_job_entity(body, spiffe("alice"))
    assert ENGINE.decide(
        PolicyRequest(principal("root", "admins"), "jobs.submit", entity, CONTEXT), strict=True
    ).allowed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("entrypoint_num_cpus", 10**400),
        ("entrypoint_num_cpus", 10**5000 - 1),
        ("entrypoint_num_cpus", math.inf),
        ("entrypoint_num_cpus", math.nan),
        ("entrypoint_num_gpus", MAX_AMOUNT + 1),
        ("entrypoint_memory", MAX_MEMORY_BYTES + 1),
        ("entrypoint_memory", 10**400),
        ("entrypoint_resources", {"TPU": 10**400}),
        ("entrypoint_resources", {f"R{i}": 1 for i in range(65)}),
        ("entrypoint_resources", {"x" * 257: 1}),
        ("metadata", {f"k{i}": "v" for i in range(65)}),
        ("metadata", {"k": "v" * (16 * 1024 + 1)}),
        ("entrypoint_label_selector", {"k": "v" * 1025}),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_numbers_and_maps_beyond_the_bounds_are_refused_by_the_model(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        JobSubmitBody.model_validate({"entrypoint": "python x.py", field: value})
    error = refused.value.errors()[0]
    assert error["loc"][0] == field and error["msg"]
