"""Policy files: the shipped pack and an operator's directory, parsed and validated by Cedar. Each policy is
known by its ``@id`` (or ``FILE#N``) and by where it is written, so that every error and every explanation
points at ``file:line``.

Cedar's parser reports what is wrong but not where, and its validator names policies by position
(``policy3``). The location comes from splitting a file into its statements at the ``;`` that ends each
policy (outside strings and comments), then asking Cedar itself which statement, and which prefix of it,
fails; the statements found are checked to be exactly the policies Cedar parsed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from raywarden.errors import PolicyError

_EOF_MESSAGE = "unexpected end of input"
_NAMED = re.compile(r"`([^`]+)`")
_PARSER_ID = re.compile(r"policy(\d+)")
# Problems listed per file; a typo in one attribute name yields one per entity type that lacks it.
_MAX_PROBLEMS = 8


def _shipped_text(name: str) -> str:
    return resources.files("raywarden.policy").joinpath(name).read_text()


def shipped_schema() -> str:
    return _shipped_text("schema.cedarschema")


def schema_actions(schema_text: str | None = None) -> frozenset[str]:
    """Every action the schema declares (``action "a", "b" appliesTo ...``)."""
    text = re.sub(r"//[^\n]*", "", schema_text if schema_text is not None else shipped_schema())
    found: set[str] = set()
    for names in re.findall(r"\baction\s+((?:\"[^\"]+\"\s*,?\s*)+)", text):
        found.update(re.findall(r"\"([^\"]+)\"", names))
    return frozenset(found)


def default_policy_files() -> list[tuple[str, str]]:
    folder = resources.files("raywarden.policy").joinpath("default")
    return sorted(
        (f"default/{entry.name}", entry.read_text()) for entry in folder.iterdir() if entry.name.endswith(".cedar")
    )


def policy_files(extra_dir: Path | None) -> list[tuple[str, str]]:
    """The shipped default pack, then every ``*.cedar`` in ``extra_dir`` (sorted by name)."""
    files = default_policy_files()
    if extra_dir is not None and extra_dir.is_dir():
        files += [(str(p), p.read_text()) for p in sorted(extra_dir.glob("*.cedar"))]
    return files


@dataclass(frozen=True)
class PolicyInfo:
    id: str
    source: str
    effect: str
    line: int = 0  # where the policy starts in its file (its first annotation), 0 when unknown

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True)
class LoadedPolicies:
    """Every policy of a set as Cedar JSON (its "EST"), by id, and where each one is written."""

    policies: dict[str, dict[str, Any]]
    infos: tuple[PolicyInfo, ...]


def load_policies(files: list[tuple[str, str]], schema: cedarpy.Schema) -> LoadedPolicies:
    """Parse and validate every file; refuses the set whole on any syntax error, schema mismatch, template or
    duplicate id, naming the file and line."""
    if not "".join(body for _, body in files).strip():
        # An empty policy set would deny everything silently; say so instead.
        raise PolicyError("the policy set is empty", hint="keep the default pack or add .cedar files")
    combined: dict[str, dict[str, Any]] = {}
    infos: dict[str, PolicyInfo] = {}
    for name, body in files:
        parsed = _parse_file(name, body)
        lines = _policy_lines(body, len(parsed))
        ids = []
        for index, policy in enumerate(parsed.values()):
            pid = str((policy.get("annotations") or {}).get("id") or f"{name}#{index}")
            info = PolicyInfo(pid, name, str(policy.get("effect")), lines[index])
            if pid in infos:
                raise PolicyError(
                    f"{info.where}: policy id {pid!r} is already used in {infos[pid].where}",
                    hint="every @id must be unique: decisions are explained by it",
                )
            combined[pid] = policy
            infos[pid] = info
            ids.append(info)
        if ids:
            _validate(name, body, schema, ids)
    if not combined:
        raise PolicyError("the policy set has no policies", hint="keep the default pack or add .cedar files")
    return LoadedPolicies(combined, tuple(infos.values()))


def _parse_file(name: str, body: str) -> dict[str, dict[str, Any]]:
    """One file's static policies as Cedar JSON, in the order they are written."""
    try:
        parsed: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(body))
    except ValueError as exc:
        where = parse_error_location(body)
        at = f"{name}:{where[0]}:{where[1]}" if where else name
        raise PolicyError(f"{at}: {exc}", hint="fix the Cedar syntax; nothing was loaded") from None
    if parsed.get("templates"):
        raise PolicyError(f"{name}: policy templates are not supported", hint="write static policies")
    policies: dict[str, dict[str, Any]] = parsed.get("staticPolicies") or {}
    return policies


def _validate(name: str, body: str, schema: cedarpy.Schema, infos: list[PolicyInfo]) -> None:
    result = cedarpy.validate_policies(body, schema)
    if result.validation_passed:
        return
    # Cedar names a policy by its position in the file ("for policy `policy3`, ..."); the operator knows it
    # by its @id and its line. One entry per policy, its problems in Cedar's words without that prefix.
    by_policy: dict[str, list[str]] = {}
    for error in result.errors:
        found = _PARSER_ID.fullmatch(error.policy_id)
        if found and int(found.group(1)) < len(infos):
            info = infos[int(found.group(1))]
            label = f"policy {info.id!r} ({info.where})"
            text = error.error.removeprefix(f"for policy `{error.policy_id}`, ")
            text = text.replace(f"`{error.policy_id}`", repr(info.id))
        else:
            label, text = name, error.error
        problems = by_policy.setdefault(label, [])
        if text not in problems:
            problems.append(text)
    entries = []
    for label, problems in by_policy.items():
        more = f"; and {len(problems) - _MAX_PROBLEMS} more" if len(problems) > _MAX_PROBLEMS else ""
        entries.append(f"{label}: {'; '.join(problems[:_MAX_PROBLEMS])}{more}")
    shown = " | ".join(entries)
    raise PolicyError(
        f"{name}: does not match the schema: {shown}",
        hint="see docs/policy.md for entity attributes and actions; nothing was loaded",
    )


def statement_spans(body: str) -> list[tuple[int, int]]:
    """(start, end) of each statement of a policy file: from its first character outside blanks and ``//``
    comments to the ``;`` that ends it (outside string literals), or to the end of the text."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    i, size = 0, len(body)
    while i < size:
        char = body[i]
        if char == "/" and body.startswith("//", i):
            newline = body.find("\n", i)
            i = size if newline < 0 else newline + 1
            continue
        if char.isspace():
            i += 1
            continue
        if start is None:
            start = i
        if char == '"':
            i += 1
            while i < size and body[i] != '"':
                i += 2 if body[i] == "\\" else 1
        elif char == ";":
            spans.append((start, i + 1))
            start = None
        i += 1
    if start is not None:
        spans.append((start, size))
    return spans


def _line_column(body: str, offset: int) -> tuple[int, int]:
    line = body.count("\n", 0, offset) + 1
    return line, offset - (body.rfind("\n", 0, offset) + 1) + 1


def _policy_lines(body: str, count: int) -> list[int]:
    """The line each policy starts on, or zeros when the statements found are not Cedar's policies."""
    spans = statement_spans(body)
    if len(spans) != count:
        return [0] * count
    return [_line_column(body, start)[0] for start, _ in spans]


def _error(text: str) -> str | None:
    try:
        cedarpy.policies_to_json_str(text)
    except ValueError as exc:
        return str(exc)
    return None


def parse_error_location(body: str) -> tuple[int, int] | None:
    """(line, column) of the first syntax error in a policy file, as Cedar's parser finds it."""
    for start, end in statement_spans(body):
        statement = body[start:end]
        message = _error(statement)
        if message is not None:
            return _line_column(body, start + _offset_in(statement, message))
    return None


def _offset_in(statement: str, message: str) -> int:
    """Where in one statement Cedar meets ``message``: the shortest prefix that already fails with it ends the
    offending token. Errors found only once the whole statement is read (an unknown function) point at the
    name they quote, or at the statement."""
    if message == _EOF_MESSAGE:
        return len(statement.rstrip())
    line_start = 0
    for line_end in [*(m.start() for m in re.finditer("\n", statement)), len(statement)]:
        if line_end < len(statement) and _error(statement[:line_end]) != message:
            line_start = line_end + 1
            continue
        for cut in range(line_start + 1, line_end + 1):
            if cut < len(statement) and _error(statement[:cut]) == message:
                named = _NAMED.search(message)
                token = len(named.group(1)) if named and message.startswith("unexpected token") else 1
                return max(line_start, cut - token)
        break
    named = _NAMED.search(message)
    if named and (at := statement.find(named.group(1))) >= 0:
        return at
    return 0
