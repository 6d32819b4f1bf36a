"""Exported heads: a rewrite of the log by someone holding the audit key verifies on its own, and is caught by
`verify --against` a head exported before it (docs/audit.md "Anchoring the log elsewhere")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from raywarden.audit import AuditLog, AuditVerificationError, verify_log
from raywarden.audit.anchor import export_document, load_exported_head
from raywarden.cli.audit import register
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import ConfigError
from raywarden.state import StateDir
from tests.unit.audit.audit_support import MakeLog, request_record

pytestmark = pytest.mark.unit


def export(audit_dir: Path, key: Ed25519PrivateKey, dest: Path) -> Path:
    with AuditLog.open(audit_dir, signing_key=key) as log:
        signed = log.checkpoint()
    assert signed is not None
    dest.write_text(json.dumps(export_document(signed, key, trust_domain="td")))
    return dest


def append(audit_dir: Path, key: Ed25519PrivateKey, records: list[dict[str, object]]) -> None:
    with AuditLog.open(audit_dir, signing_key=key, checkpoint_every=10) as log:
        for record in records:
            log.append(record)


def rewrite(audit_dir: Path, key: Ed25519PrivateKey, change: dict[int, dict[str, object] | None]) -> None:
    """What root with the audit key can do: rebuild the whole log from edited records, freshly chained and
    signed (``None`` drops a record)."""
    records = []
    for path in sorted(audit_dir.glob("audit-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            seq = record.pop("seq")
            record.pop("prev")
            record.pop("time")
            if seq in change:
                replaced = change[seq]
                if replaced is None:
                    continue
                record = replaced
            records.append(record)
    fresh = audit_dir.parent / "forged"
    append(fresh, key, records)
    shutil.rmtree(audit_dir)
    fresh.rename(audit_dir)


def test_exported_head_verifies_and_keeps_verifying(make_log: MakeLog, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    audit_dir = make_log(30)
    head = load_exported_head(export(audit_dir, key, tmp_path / "head.json"))
    assert head.seq == 29
    append(audit_dir, key, [request_record(i) for i in range(30, 45)])
    report = verify_log(audit_dir, public_key=key.public_key(), against=head)
    assert report.records == 45 and report.against_seq == 29


def test_a_rewrite_re_signed_with_the_audit_key_is_caught(
    make_log: MakeLog, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    audit_dir = make_log(30)
    head = load_exported_head(export(audit_dir, key, tmp_path / "head.json"))
    append(audit_dir, key, [request_record(i) for i in range(30, 45)])
    rewrite(audit_dir, key, {5: {**request_record(5), "decision": "allow", "principal": "spiffe://td/user/nobody"}})
    # On its own the forged log is consistent and every checkpoint is validly signed by the (stolen) key ...
    assert verify_log(audit_dir, public_key=key.public_key()).records == 45
    # ... but it no longer holds the exported head.
    with pytest.raises(AuditVerificationError) as caught:
        verify_log(audit_dir, public_key=key.public_key(), against=head)
    assert caught.value.kind == "modification" and caught.value.seq <= 5
    assert "no longer matches the head exported at" in caught.value.message


@pytest.mark.parametrize("dropped", [range(20, 45), range(29, 30), range(0, 1)])
def test_records_removed_and_re_signed_are_caught(
    make_log: MakeLog, key: Ed25519PrivateKey, tmp_path: Path, dropped: range
) -> None:
    audit_dir = make_log(30)
    head = load_exported_head(export(audit_dir, key, tmp_path / "head.json"))
    append(audit_dir, key, [request_record(i) for i in range(30, 45)])
    rewrite(audit_dir, key, dict.fromkeys(dropped))
    verify_log(audit_dir, public_key=key.public_key())
    with pytest.raises(AuditVerificationError) as caught:
        verify_log(audit_dir, public_key=key.public_key(), against=head)
    assert caught.value.kind in ("truncation", "modification") and caught.value.seq <= 29


def test_a_log_re_keyed_by_the_attacker_is_caught(make_log: MakeLog, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    audit_dir = make_log(30)
    head = load_exported_head(export(audit_dir, key, tmp_path / "head.json"))
    rewrite(audit_dir, Ed25519PrivateKey.generate(), {3: request_record(99)})
    # The exported head carries the key it was signed with: checkpoints by another key do not verify.
    with pytest.raises(AuditVerificationError) as caught:
        verify_log(audit_dir, public_key=head.public_key, against=head)
    assert caught.value.kind == "checkpoint"


def test_an_altered_export_is_refused(make_log: MakeLog, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    path = export(make_log(30), key, tmp_path / "head.json")
    doc = json.loads(path.read_text())
    for field, value in (("head", "00" * 32), ("size", 10)):
        forged = {**doc, "checkpoint": {**doc["checkpoint"], field: value}}
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        with pytest.raises(ConfigError, match="does not verify"):
            load_exported_head(tmp_path / "forged.json")
    (tmp_path / "other.json").write_text(json.dumps({**doc, "format": "something/else"}))
    with pytest.raises(ConfigError, match="not an exported audit head"):
        load_exported_head(tmp_path / "other.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        load_exported_head(tmp_path / "junk.json")


def test_since_checkpoint_after_the_export_is_refused(
    make_log: MakeLog, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    audit_dir = make_log(30)
    head = load_exported_head(export(audit_dir, key, tmp_path / "head.json"))
    append(audit_dir, key, [request_record(i) for i in range(30, 45)])
    with pytest.raises(ConfigError, match="starts after the head exported"):
        verify_log(audit_dir, public_key=key.public_key(), since_checkpoint=40, against=head)


# -- the CLI ----------------------------------------------------------------------------------------------


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def main() -> None:
        """Test root."""

    register(root)
    return root


def test_cli_export_then_verify_against(app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    state = StateDir(tmp_path / "state")
    init_state(state, ClusterConfig(listen=Listen(host="127.0.0.1", port=1)), admin_name="admin", profile_name="a")
    head = tmp_path / "head.json"
    runner = CliRunner()
    made = runner.invoke(app, ["audit", "checkpoint", "--export", str(head), "--state-dir", str(state.root)])
    assert made.exit_code == 0, made.output
    assert (head.stat().st_mode & 0o777) == 0o600 and json.loads(head.read_text())["seq"] >= 3
    again = runner.invoke(app, ["audit", "checkpoint", "--export", str(head), "--state-dir", str(state.root)])
    assert again.exit_code != 0 and isinstance(again.exception, ConfigError)
    ok = runner.invoke(app, ["audit", "verify", "--against", str(head), "--state-dir", str(state.root)])
    assert ok.exit_code == 0 and "matches the exported head through seq" in ok.output, ok.output
    records = [json.loads(line) for line in next(state.audit_dir.glob("audit-*.jsonl")).read_text().splitlines()]
    assert records[-1]["event"] == "checkpoint.export" and records[-1]["file"] == str(head)
    # The exported head covers the record of its own export.
    assert json.loads(head.read_text())["seq"] == records[-1]["seq"]
