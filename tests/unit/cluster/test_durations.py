"""Lifetimes as durations: parsing, bounds, config.json of the previous release, `init` flags, CA bundles."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from raywarden.cluster.certlife import Lifetime
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.durations import format_duration, parse_duration
from raywarden.errors import ConfigError
from raywarden.pki.certs import load_cert
from raywarden.state import StateDir, trusted_ca_file

pytestmark = pytest.mark.unit

MINUTE, HOUR, DAY = dt.timedelta(minutes=1), dt.timedelta(hours=1), dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2m", 2 * MINUTE),
        ("90s", dt.timedelta(seconds=90)),
        ("12h", 12 * HOUR),
        ("30d", 30 * DAY),
        ("1w", 7 * DAY),
        ("1d12h", DAY + 12 * HOUR),
        (" 1D 12H ", DAY + 12 * HOUR),
        ("1h1h", 2 * HOUR),
    ],
)
def test_durations_read_as_people_write_them(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


ARABIC_INDIC_ONE = "\u0661"


@pytest.mark.parametrize(
    "text",
    [
        *("", "5", "30", "1x", "-1d", "1.5h", "d", "1d 2", "1d-2h", "0x1d", "1e3s", "9" * 10 + "d", "999999999w"),
        *("30d#", ARABIC_INDIC_ONE + "d", "1\x00d", "1\nd"),
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "shortest"), [("2m", "2m"), ("90s", "1m30s"), ("1w", "7d"), ("1d12h", "1d12h")])
def test_formatting_reads_back(text: str, shortest: str) -> None:
    assert format_duration(parse_duration(text)) == shortest
    assert parse_duration(shortest) == parse_duration(text)


def test_defaults_and_bounds() -> None:
    config = ClusterConfig()
    assert (config.user_cert_ttl, config.gateway_cert_ttl, config.node_cert_ttl) == (12 * HOUR, 90 * DAY, 30 * DAY)
    assert config.head_cert_ttl == 365 * DAY and config.node_drain_timeout == 10 * MINUTE
    # Two minutes is short enough to watch renewals happen; less is refused.
    for field in ("user_cert_ttl", "gateway_cert_ttl", "node_cert_ttl"):
        assert getattr(ClusterConfig.model_validate({field: "2m"}), field) == 2 * MINUTE
        with pytest.raises(ValueError, match="between 2m and"):
            ClusterConfig.model_validate({field: "119s"})
    with pytest.raises(ValueError, match="between 2m and 7d"):
        ClusterConfig.model_validate({"user_cert_ttl": "8d"})
    with pytest.raises(ValueError, match="between 1d and"):
        ClusterConfig.model_validate({"head_cert_ttl": "23h"})
    with pytest.raises(ValueError, match="a duration is text"):
        ClusterConfig.model_validate({"node_cert_ttl": 180})


def _previous_release_config() -> dict[str, object]:
    """config.json exactly as the release before durations wrote it (numbers of hours and days)."""
    data = ClusterConfig(trust_domain="old.raywarden").model_dump(mode="json")
    for field in ("user_cert_ttl", "gateway_cert_ttl", "node_cert_ttl", "head_cert_ttl", "node_drain_timeout"):
        del data[field]
    data.update({"user_cert_hours": 12.0, "gateway_cert_days": 90, "node_cert_days": 7})
    return data


def test_a_previous_release_config_loads_with_the_same_lifetimes(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.config_path.write_text(json.dumps(_previous_release_config(), indent=2))
    config = state.load_config()
    assert (config.user_cert_ttl, config.gateway_cert_ttl, config.node_cert_ttl) == (12 * HOUR, 90 * DAY, 7 * DAY)
    assert config.head_cert_ttl == 365 * DAY
    # Written back, it speaks durations only, and reads back the same.
    state.save_config(config)
    saved = json.loads(state.config_path.read_text())
    assert saved["node_cert_ttl"] == "7d" and saved["user_cert_ttl"] == "12h"
    assert not {"user_cert_hours", "gateway_cert_days", "node_cert_days"} & set(saved)
    assert state.load_config() == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"node_cert_ttl": "30d"}, "node_cert_days and node_cert_ttl both set"),
        ({"user_cert_hours": True}, "user_cert_hours must be a positive number"),
        ({"gateway_cert_days": -1}, "gateway_cert_days must be a positive number"),
        ({"gateway_cert_days": "90"}, "gateway_cert_days must be a positive number"),
        ({"node_cert_days": 400}, "between 2m and 397d"),
        ({"user_cert_hours": 0.01}, "between 2m and 7d"),
    ],
)
def test_a_previous_release_config_with_bad_values_is_refused_with_the_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    state = StateDir(tmp_path)
    state.config_path.write_text(json.dumps({**_previous_release_config(), **change}))
    with pytest.raises(ConfigError, match=message):
        state.load_config()


def test_the_ca_file_to_trust_is_the_bundle_once_there_is_one(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert trusted_ca_file(state, "internal") == state.internal_ca_cert == tmp_path / "pki" / "internal-ca.crt"
    assert trusted_ca_file(state, "access") == state.access_ca_cert
    state.pki_dir.mkdir()
    state.internal_ca_bundle.write_text("two CAs")
    assert trusted_ca_file(state, "internal") == tmp_path / "pki" / "internal-ca-bundle.pem"
    assert trusted_ca_file(state, "access") == state.access_ca_cert
    state.access_ca_bundle.write_text("two CAs")
    assert trusted_ca_file(state, "access") == tmp_path / "pki" / "access-ca-bundle.pem"


def _init(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {"RAYWARDEN_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", "init", "--state-dir", str(tmp_path / "s"), *flags, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_init_takes_lifetimes_and_issues_with_them(tmp_path: Path) -> None:
    done = _init(tmp_path, "--node-cert-ttl", "3m", "--gateway-cert-ttl", "2m", "--user-cert-ttl", "1h30m")
    assert done.returncode == 0, done.stderr
    state = StateDir(tmp_path / "s")
    saved = json.loads(state.config_path.read_text())
    assert (saved["node_cert_ttl"], saved["gateway_cert_ttl"], saved["user_cert_ttl"]) == ("3m", "2m", "1h30m")
    assert Lifetime.of(load_cert(state.gateway_cert)).total == 2 * MINUTE
    assert Lifetime.of(load_cert(state.node_cert)).total == 365 * DAY  # the head's: its own lifetime
    client = tmp_path / "home" / "profiles" / "raywarden.local" / "client.crt"
    assert Lifetime.of(load_cert(client)).total == 90 * MINUTE


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--node-cert-ttl", "30"), "--node-cert-ttl: '30' is not a duration"),
        (("--node-cert-ttl", "1m"), "--node-cert-ttl: must be between 2m and 397d, not 1m"),
        (("--gateway-cert-ttl", "398d"), "--gateway-cert-ttl: must be between 2m and 397d"),
        (("--head-cert-ttl", "2m"), "--head-cert-ttl: must be between 1d and 3660d"),
        (("--user-cert-ttl", "12 hours"), "--user-cert-ttl: '12 hours' is not a duration"),
        (("--node-drain-timeout", "5s"), "--node-drain-timeout: must be between 10s and 7d"),
    ],
)
def test_init_refuses_bad_lifetimes_before_writing_anything(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    done = _init(tmp_path, *flags)
    assert done.returncode == 2 and message in " ".join(done.stderr.split()), done.stderr
    assert "hint:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "home").exists()


def test_init_with_the_defaults_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    state = StateDir(tmp_path / "s")
    init_state(state, ClusterConfig(listen=Listen(host="127.0.0.1", port=18443)), admin_name="a", profile_name="p")
    assert Lifetime.of(load_cert(state.gateway_cert)).total == 90 * DAY
    assert json.loads(state.config_path.read_text())["gateway_cert_ttl"] == "90d"
