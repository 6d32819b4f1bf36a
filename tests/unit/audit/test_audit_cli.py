"""`raywarden audit verify|tail|export` against real logs in a state dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from raywarden.audit import AuditLog, AuditVerificationError, audit_public_key_pem, load_or_create_audit_key
from raywarden.cli.audit import register
from raywarden.cli.audit_records import format_record
from raywarden.config import ClusterConfig
from raywarden.errors import UsageError
from raywarden.state import StateDir
from tests.unit.audit.audit_support import request_record, segment_lines, write_lines

pytestmark = pytest.mark.unit


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def main() -> None:
        """Test root."""

    register(root)
    return root


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    key = load_or_create_audit_key(state.audit_key)
    with AuditLog.open(state.audit_dir, signing_key=key, checkpoint_every=4) as log:
        for i in range(10):
            log.append(request_record(i))
        log.append({"kind": "cluster", "event": "down", "actor": "spiffe://td/user/admin"})
    return state


def run(app: typer.Typer, *args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output, result.exception


def test_verify_ok(app: typer.Typer, state: StateDir) -> None:
    code, output, _ = run(app, "audit", "verify", "--state-dir", str(state.root))
    assert code == 0 and "audit log verified" in output and "11 records" in output
    code, output, _ = run(app, "audit", "verify", "--state-dir", str(state.root), "--json")
    report = json.loads(output)
    assert code == 0 and report["ok"] and report["records"] == 11 and report["last_checkpoint_size"] == 11


def test_verify_with_external_public_key(app: typer.Typer, state: StateDir, tmp_path: Path) -> None:
    (tmp_path / "audit.pub").write_text(audit_public_key_pem(state.audit_key))
    code, _, _ = run(
        app, "audit", "verify", "--state-dir", str(state.root), "--public-key", str(tmp_path / "audit.pub")
    )
    assert code == 0


def test_verify_reports_tampering_and_exits_non_zero(app: typer.Typer, state: StateDir) -> None:
    path, lines = segment_lines(state.audit_dir)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(path, lines)
    code, output, exc = run(app, "audit", "verify", "--state-dir", str(state.root), "--json")
    assert code != 0 and isinstance(exc, AuditVerificationError)
    assert json.loads(output) == {
        "ok": False,
        "kind": "reordering",
        "seq": 2,
        "detail": exc.detail,
        "location": exc.location,
    }


def test_tail_filters(app: typer.Typer, state: StateDir) -> None:
    code, output, _ = run(app, "audit", "tail", "--state-dir", str(state.root), "--json", "--decision", "deny")
    records = [json.loads(line) for line in output.splitlines()]
    assert code == 0 and [r["seq"] for r in records] == [0, 5]
    code, output, _ = run(
        app, "audit", "tail", "--state-dir", str(state.root), "--json", "--action", "jobs.*", "-n", "3",
        "--principal", "spiffe://td/user/u1",
    )  # fmt: skip
    assert [json.loads(line)["seq"] for line in output.splitlines()] == [1, 4, 7]
    code, output, _ = run(app, "audit", "tail", "--state-dir", str(state.root), "--principal", "spiffe://td/user/admin")
    assert code == 0 and "down" in output and "#10" in output
    code, output, _ = run(app, "audit", "tail", "--state-dir", str(state.root), "--json", "--since", "2999-01-01")
    assert code == 0 and output == ""


def test_unknown_action_glob_is_an_error_naming_close_ones(app: typer.Typer, state: StateDir) -> None:
    code, _, exc = run(app, "audit", "tail", "--state-dir", str(state.root), "--action", "job.*")
    assert isinstance(exc, UsageError) and exc.exit_code == 2
    assert "matches no action" in exc.message and exc.hint is not None and "jobs.*" in exc.hint
    code, _, exc = run(app, "audit", "export", "--state-dir", str(state.root), "--action", "jobs.sumbit")
    assert isinstance(exc, UsageError) and exc.hint is not None and "jobs.submit" in exc.hint
    # Every schema action and route action is accepted, exactly or by glob.
    for action in ("jobs.submit", "jobs.*", "identity.enroll", "raywarden.node.*", "*"):
        code, _, exc = run(app, "audit", "tail", "--state-dir", str(state.root), "--action", action, "-n", "1")
        assert code == 0, (action, exc)
    code, output, _ = run(app, "audit", "actions", "--json")
    assert code == 0 and "jobs.submit" in json.loads(output)


def test_principal_short_names(app: typer.Typer, state: StateDir) -> None:
    state.save_config(ClusterConfig(trust_domain="td"))
    code, output, _ = run(
        app, "audit", "tail", "--state-dir", str(state.root), "--json", "--principal", "u1", "-n", "50"
    )
    assert code == 0 and {json.loads(line)["principal"] for line in output.splitlines()} == {"spiffe://td/user/u1"}
    code, output, _ = run(app, "audit", "tail", "--state-dir", str(state.root), "--principal", "admin")
    assert code == 0 and "#10" in output
    code, output, _ = run(app, "audit", "tail", "--state-dir", str(state.root), "--json", "--principal", "sa:u1")
    assert code == 0 and output == ""
    code, _, exc = run(app, "audit", "tail", "--state-dir", str(state.root), "--principal", "team:x")
    assert isinstance(exc, UsageError) and exc.hint is not None and "sa:NAME" in exc.hint


def test_short_principal_needs_a_cluster(app: typer.Typer, state: StateDir) -> None:
    _code, _, exc = run(app, "audit", "tail", "--state-dir", str(state.root), "--principal", "u1")
    assert isinstance(exc, UsageError) and "trust domain" in exc.message


def test_local_actor_matches_its_principal(app: typer.Typer, tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s2")
    key = load_or_create_audit_key(state.audit_key)
    with AuditLog.open(state.audit_dir, signing_key=key) as log:
        log.append({"kind": "identity", "event": "user.create", "principal": "spiffe://td/user/bob",
                    "actor": "local:0 (spiffe://td/user/admin)"})  # fmt: skip
    code, output, _ = run(app, "audit", "tail", "--state-dir", str(state.root), "--principal", "spiffe://td/user/admin")
    assert code == 0 and "user.create" in output


def test_export_json(app: typer.Typer, state: StateDir, tmp_path: Path) -> None:
    code, output, _ = run(app, "audit", "export", "--state-dir", str(state.root), "--json", "--decision", "deny")
    assert code == 0 and [r["seq"] for r in json.loads(output)] == [0, 5]
    out = tmp_path / "deny.jsonl"
    code, output, _ = run(
        app, "audit", "export", "--state-dir", str(state.root), "--json", "--decision", "deny", "-o", str(out)
    )
    assert code == 0 and json.loads(output) == {"exported": 2, "output": str(out)}


def test_export_is_byte_exact_json_lines(app: typer.Typer, state: StateDir, tmp_path: Path) -> None:
    code, output, _ = run(app, "audit", "export", "--state-dir", str(state.root), "--since", "1d")
    _, lines = segment_lines(state.audit_dir)
    assert code == 0 and output.encode() == b"".join(line + b"\n" for line in lines)
    out = tmp_path / "export.jsonl"
    code, _, _ = run(app, "audit", "export", "--state-dir", str(state.root), "--output", str(out), "--decision", "deny")
    assert code == 0 and len(out.read_text().splitlines()) == 2 and (out.stat().st_mode & 0o777) == 0o600


def test_missing_log_is_a_clear_error(app: typer.Typer, tmp_path: Path) -> None:
    code, _, exc = run(app, "audit", "tail", "--state-dir", str(tmp_path / "nothing"))
    assert code != 0 and "no audit log" in str(exc)


def test_human_output_neutralises_hostile_values() -> None:
    line = format_record({"seq": 1, "kind": "request", "resource": "[bold red]x\x1b[2J", "decision": "deny"})
    assert "\x1b" not in line and "\\[bold red]" in line


def test_help_lists_every_option(app: typer.Typer) -> None:
    _, output, _ = run(app, "audit", "tail", "--help")
    for option in ("--follow", "--json", "--principal", "--action", "--decision", "--since"):
        assert option in output
