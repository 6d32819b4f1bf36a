"""Policy errors point at file:line and name policies by their @id, never by Cedar's positional policy0."""

from __future__ import annotations

import re

import pytest

from raywarden.errors import PolicyError
from raywarden.policy.engine import PolicyEngine, default_policy_files
from raywarden.policy.sources import parse_error_location, statement_spans

pytestmark = pytest.mark.unit

GOOD = '// two good policies\n@id("one")\npermit (principal, action, resource)\nwhen { context.auth_age_s < 60 };\n\n'


def refusal(body: str, name: str = "ops/bad.cedar") -> str:
    with pytest.raises(PolicyError) as caught:
        PolicyEngine.from_sources([*default_policy_files(), (name, body)])
    return caught.value.message


@pytest.mark.parametrize(
    ("tail", "where", "message"),
    [
        # A missing comma: the error is at the token Cedar did not expect.
        ('@id("two")\npermit (principal,\n  action resource);', "ops/bad.cedar:8:10", "unexpected token `resource`"),
        ('@id("two")\npermit (principal, action, resource)\nwhen { resource.x === 1 };', "8:", "unexpected token"),
        ('@id("two")\npermit (principal, action, resource)\nwhen { "open };', "8:8", "invalid token"),
        ('@id("two")\npermit (principal, action, resource)\n  when { nosuch(1) };', "8:10", "is not a valid function"),
        ('@id("two")\npermit (principal, action, resource)\nwhen { true }', "8:14", "unexpected end of input"),
        ('@id("two")\npermit (principal, action, resource)\nwhen { 99999999999999999999 };', "8:", "integer"),
    ],
)
def test_a_syntax_error_says_file_line_and_column(tail: str, where: str, message: str) -> None:
    text = refusal(GOOD + tail)
    assert text.startswith("ops/bad.cedar:") and where in text and message in text, text


def test_statements_end_at_semicolons_outside_strings_and_comments() -> None:
    body = 'permit (principal, action, resource) when { "a;b" == "c" }; // x; y\n'
    body += '  @id("z") forbid (principal, action, resource);'
    spans = statement_spans(body)
    assert [body[a:b] for a, b in spans] == [
        'permit (principal, action, resource) when { "a;b" == "c" };',
        '@id("z") forbid (principal, action, resource);',
    ]
    escaped = 'permit (principal, action, resource) when { "a\\";b" == "x" };'
    assert statement_spans(escaped) == [(0, len(escaped))]
    assert parse_error_location(GOOD) is None


def test_a_schema_error_names_the_policy_by_its_id_and_line() -> None:
    text = refusal(GOOD + '@id("typo")\npermit (principal, action, resource)\nwhen { resource.ownr == "x" };')
    assert text.startswith("ops/bad.cedar: does not match the schema: policy 'typo' (ops/bad.cedar:6): ")
    assert "attribute `ownr`" in text
    assert not re.search(r"\bpolicy\d+\b", text), text


def test_a_policy_without_an_id_is_named_by_file_and_position() -> None:
    text = refusal(GOOD + 'permit (principal, action == Raywarden::Action::"nope", resource);')
    assert "policy 'ops/bad.cedar#1' (ops/bad.cedar:6)" in text


def test_a_duplicate_id_names_both_places() -> None:
    text = refusal(GOOD + '@id("admins-all")\npermit (principal, action, resource);')
    assert text == "ops/bad.cedar:6: policy id 'admins-all' is already used in default/admins.cedar:2"


def test_every_policy_knows_where_it_is_written() -> None:
    eng = PolicyEngine.from_sources([*default_policy_files(), ("ops/good.cedar", GOOD)])
    files = dict(default_policy_files())
    for info in eng.policies:
        if info.source == "ops/good.cedar":
            assert info.where == "ops/good.cedar:2"
            continue
        lines = files[info.source].splitlines()
        assert lines[info.line - 1].startswith(f'@id("{info.id}")'), info
