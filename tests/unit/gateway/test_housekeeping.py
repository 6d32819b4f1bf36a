"""Structural rules of the gateway and the packages it leans on: one error hierarchy, one way to compare
secrets, no assert on the security path, low-level modules that import nothing from the app, small modules."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import raywarden
from raywarden.errors import RaywardenError

pytestmark = pytest.mark.unit
PACKAGES = ("gateway", "identity", "audit", "scan", "pki")
SRC = Path(raywarden.__file__).parent


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(f"raywarden.{package}")
        names.append(module.__name__)
        found = pkgutil.walk_packages(module.__path__, f"{module.__name__}.")
        names += [m.name for m in found if not m.name.endswith(".__main__")]
    return names


def _files() -> list[Path]:
    return [p for package in PACKAGES for p in (SRC / package).rglob("*.py")]


def test_every_exception_derives_from_raywarden_error() -> None:
    stray = []
    for name in _modules():
        for _, value in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if value.__module__ == name and issubclass(value, BaseException) and not issubclass(value, RaywardenError):
                stray.append(f"{name}.{value.__name__}")
    assert stray == []


def test_secrets_are_compared_through_secret_matches_only() -> None:
    offenders = [str(p.relative_to(SRC)) for p in _files() if "compare_digest" in p.read_text()]
    assert offenders == []


def test_no_assert_in_the_gateway() -> None:
    offenders = []
    for path in (SRC / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("low", ["tls", "request", "responses", "cookies", "upstream", "tokens", "oidc", "authn"])
def test_low_level_modules_import_nothing_from_the_app(low: str) -> None:
    tree = ast.parse((SRC / "gateway" / f"{low}.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith(("raywarden.gateway.app", "raywarden.gateway.handlers"))}


def test_gateway_modules_are_small() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in (SRC / "gateway").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
