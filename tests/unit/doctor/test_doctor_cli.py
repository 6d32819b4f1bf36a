"""`raywarden doctor` on the command line: JSON, the table, and exit codes 0 / 1 / 2."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from raywarden.cli import doctor as doctor_cli
from raywarden.errors import RaywardenError
from raywarden.files import write_private, write_public
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import StateDir

pytestmark = pytest.mark.unit


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """raywarden (test root)."""

    doctor_cli.register(app)
    return app


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(_app(), ["doctor", *args])
    if isinstance(result.exception, RaywardenError):  # main() turns these into messages and exit codes
        return result.exception.exit_code, result.exception.message
    return result.exit_code, result.stdout


def test_healthy_json_exits_0(state: StateDir) -> None:
    code, out = _invoke("--state-dir", str(state.root), "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["ok"] is True and data["summary"]["fail"] == 0 and data["cluster_running"] is False
    by_id = {c["id"]: c for c in data["checks"]}
    assert by_id["files.keys"]["status"] == "pass" and by_id["files.keys"]["group"] == "files"
    assert by_id["listeners.ray"] == {
        "group": "listeners",
        "id": "listeners.ray",
        "status": "skip",
        "message": "skipped: cluster is down",
        "fix": None,
        "details": {},
    }


def test_failure_exits_1_and_prints_the_fix(state: StateDir) -> None:
    os.chmod(state.node_key, 0o644)
    code, out = _invoke("--state-dir", str(state.root))
    assert code == 1
    assert "files.keys" in out and f"chmod 600 {state.node_key}" in out and "NOT OK" in out


def test_warning_passes_unless_strict(state: StateDir) -> None:
    # A head certificate two days from its end (renewed only when the head's Ray restarts) is a warning.
    internal = CertificateAuthority.load("internal", "doctor.test", state.internal_ca_cert, state.internal_ca_key)
    key = generate_private_key()
    cert = internal.issue(
        key.public_key(),
        SpiffeId("doctor.test", "node", "head"),
        lifetime=dt.timedelta(days=2),
        server=True,
        client=True,
        ip_addresses=("127.0.0.1",),
    )
    write_private(state.node_key, private_key_pem(key))
    write_public(state.node_cert, cert_pem(cert))
    assert _invoke("--state-dir", str(state.root))[0] == 0
    code, out = _invoke("--state-dir", str(state.root), "--strict", "--json")
    assert code == 1 and json.loads(out)["ok"] is False


def test_missing_state_dir_exits_2(tmp_path: Path) -> None:
    code, message = _invoke("--state-dir", str(tmp_path / "none"), "--json")
    assert code == 2 and "no raywarden cluster state" in message


def test_help_lists_every_group() -> None:
    result = CliRunner().invoke(_app(), ["doctor", "--help"])
    assert result.exit_code == 0
    for word in ("files", "certs", "listeners", "ray", "policy", "audit", "clock", "--strict", "--json"):
        assert word in result.stdout
