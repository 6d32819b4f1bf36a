"""Cedar text of a policy's parts, from its Cedar JSON ("EST"), for explanations.

cedarpy renders policies from JSON with every subexpression in parentheses; a condition shown to a user
reads better as it was written. This renders the forms Cedar's JSON has today with Cedar's precedence, and
leaves anything else to cedarpy's own rendering. Display only: nothing here decides anything.
"""

from __future__ import annotations

import json
import re
from typing import Any

import cedarpy

from raywarden.errors import RaywardenError

# Cedar's grammar, loosest first: if-then-else, ||, &&, relations (== != < <= > >= in has like is), + -, *,
# unary ! and -, member access and method calls, primaries.
_IF, _OR, _AND, _REL, _ADD, _MUL, _UNARY, _MEMBER, _PRIMARY = range(9)
_BINARY = {
    "||": _OR,
    "&&": _AND,
    "==": _REL,
    "!=": _REL,
    "<": _REL,
    "<=": _REL,
    ">": _REL,
    ">=": _REL,
    "in": _REL,
    "+": _ADD,
    "-": _ADD,
    "*": _MUL,
}
_METHODS = ("contains", "containsAll", "containsAny", "getTag", "hasTag")
_CONSTRUCTORS = ("ip", "decimal", "datetime", "duration")
_IDENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")


class _Unrendered(RaywardenError):
    """Internal: a form this module does not handle; the caller falls back."""


def expression(expr: dict[str, Any]) -> str:
    """A condition as Cedar text."""
    try:
        return _render(expr, _IF)
    except (_Unrendered, KeyError, TypeError, ValueError, AttributeError):
        return _by_cedar(expr)


def scope(var: str, constraint: dict[str, Any]) -> str:
    """``principal in Raywarden::Group::"admins"``: one part of a policy's scope as Cedar text."""
    op = constraint.get("op")
    entity = constraint.get("entity")
    if op == "All":
        return var
    if op in ("==", "in") and isinstance(entity, dict):
        return f"{var} {op} {_entity(entity)}"
    if op == "in" and isinstance(constraint.get("entities"), list):
        return f"{var} in [{', '.join(_entity(e) for e in constraint['entities'])}]"
    if op == "is":
        text = f"{var} is {constraint.get('entity_type')}"
        inner = constraint.get("in")
        if isinstance(inner, dict) and isinstance(inner.get("entity"), dict):
            text += f" in {_entity(inner['entity'])}"
        return text
    return f"{var} {json.dumps(constraint)}"


def _by_cedar(expr: dict[str, Any]) -> str:
    policy = {
        "effect": "permit",
        "principal": {"op": "All"},
        "action": {"op": "All"},
        "resource": {"op": "All"},
        "conditions": [{"kind": "when", "body": expr}],
    }
    try:
        text = cedarpy.policies_from_json_str(json.dumps({"staticPolicies": {"p": policy}}))
    except ValueError:
        return json.dumps(expr)
    start, end = text.find("when {"), text.rfind("}")
    return text[start + 6 : end].strip() if 0 <= start < end else text


def _entity(uid: dict[str, Any]) -> str:
    uid = uid.get("__entity", uid)
    return f"{uid['type']}::{json.dumps(uid['id'], ensure_ascii=False)}"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict) and "__entity" in value:
        return _entity(value)
    if isinstance(value, dict) and "__extn" in value:
        return f"{value['__extn']['fn']}({_value(value['__extn']['arg'])})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)}: {_value(v)}" for k, v in value.items()) + "}"
    raise _Unrendered(repr(value))


def _key(name: str) -> str:
    return name if _IDENT.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _wrap(text: str, level: int, context: int) -> str:
    return f"({text})" if level < context else text


def _render(expr: dict[str, Any], context: int) -> str:
    if len(expr) != 1:
        raise _Unrendered(repr(expr))
    ((op, inner),) = expr.items()
    if op == "Value":
        return _value(inner)
    if op == "Var":
        return str(inner)
    if op in _BINARY:
        level = _BINARY[op]
        # Cedar's binary operators associate to the left; relations do not chain at all.
        left = _render(inner["left"], level if level != _REL else level + 1)
        right = _render(inner["right"], level + 1)
        return _wrap(f"{left} {op} {right}", level, context)
    if op in ("!", "neg"):
        sign = "!" if op == "!" else "-"
        return _wrap(sign + _render(inner["arg"], _UNARY), _UNARY, context)
    if op == ".":
        attr = inner["attr"]
        base = _render(inner["left"], _MEMBER)
        return f"{base}.{attr}" if _IDENT.fullmatch(attr) else f"{base}[{json.dumps(attr)}]"
    if op == "has":
        return _wrap(f"{_render(inner['left'], _ADD)} has {_key(inner['attr'])}", _REL, context)
    if op in _METHODS:
        return f"{_render(inner['left'], _MEMBER)}.{op}({_render(inner['right'], _IF)})"
    if op == "isEmpty":
        return f"{_render(inner['arg'], _MEMBER)}.isEmpty()"
    if op == "like":
        return _wrap(f"{_render(inner['left'], _ADD)} like {_pattern(inner['pattern'])}", _REL, context)
    if op == "is":
        text = f"{_render(inner['left'], _ADD)} is {inner['entity_type']}"
        if "in" in inner:
            text += f" in {_render(inner['in'], _ADD)}"
        return _wrap(text, _REL, context)
    if op == "if-then-else":
        text = f"if {_render(inner['if'], _IF)} then {_render(inner['then'], _IF)} else {_render(inner['else'], _IF)}"
        return _wrap(text, _IF, context)
    if op == "Set":
        return "[" + ", ".join(_render(e, _IF) for e in inner) + "]"
    if op == "Record":
        return "{" + ", ".join(f"{_key(k)}: {_render(v, _IF)}" for k, v in inner.items()) + "}"
    if isinstance(inner, list):  # an extension function: ip("..."), or a method such as isInRange
        args = [_render(a, _IF) for a in inner]
        if op in _CONSTRUCTORS:
            return f"{op}({', '.join(args)})"
        if inner:
            return f"{_render(inner[0], _MEMBER)}.{op}({', '.join(args[1:])})"
    raise _Unrendered(op)


def _pattern(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        if part == "Wildcard":
            text += "*"
        elif isinstance(part, dict) and isinstance(part.get("Literal"), str):
            text += part["Literal"].replace("\\", "\\\\").replace("*", "\\*").replace('"', '\\"')
        else:
            raise _Unrendered(repr(part))
    return f'"{text}"'
