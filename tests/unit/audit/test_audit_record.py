"""Canonical encoding, the hash chain's domain separation, and redaction of secrets."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from raywarden.audit import AuditRecordError, redact
from raywarden.audit.record import GENESIS_HEAD, canonical_json, chain_head, leaf_hash
from raywarden.audit.redact import REDACTED, is_secret_key

pytestmark = pytest.mark.unit

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.MEUCIQDx-signature_part"
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"


def test_canonical_json_sorted_compact_ascii_one_line() -> None:
    encoded = canonical_json({"b": 1, "a": {"d": [1, 2], "c": "x\ny\u00e9"}})
    assert encoded == b'{"a":{"c":"x\\ny\\u00e9","d":[1,2]},"b":1}'


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_hashes_follow_rfc6962_prefixes() -> None:
    record = b'{"seq":0}'
    assert GENESIS_HEAD == hashlib.sha256(b"").digest()
    assert leaf_hash(record) == hashlib.sha256(b"\x00" + record).digest()
    expected = hashlib.sha256(b"\x01" + GENESIS_HEAD + hashlib.sha256(b"\x00" + record).digest()).digest()
    assert chain_head(GENESIS_HEAD, record) == expected
    # A leaf and a node over the same bytes never collide: the prefixes differ.
    assert leaf_hash(GENESIS_HEAD + leaf_hash(record)) != chain_head(GENESIS_HEAD, record)


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "ray_token",
        "X-Auth-Token",
        "accessToken",
        "client_secret",
        "password",
        "db_passwd",
        "Authorization",
        "cookie",
        "Set-Cookie",
        "private_key",
        "privateKey",
        "api_key",
        "enrollment_code",
        "authCode",
        "code",
        "credentials",
    ],
)
def test_secret_key_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name", ["status_code", "exit_code", "statusCode", "auth_method", "principal", "encoding", "unicode", "action"]
)
def test_ordinary_key_names(name: str) -> None:
    assert not is_secret_key(name)


def test_redact_strips_secret_fields_at_any_depth() -> None:
    record: dict[str, Any] = {
        "kind": "request",
        "headers": {"Authorization": "Bearer abc", "Cookie": "s=1", "accept": "json"},
        "body": [{"join_token": "t0k3n", "name": "w1"}],
        "status_code": 200,
    }
    clean = redact(record)
    assert clean["headers"] == {"Authorization": REDACTED, "Cookie": REDACTED, "accept": "json"}
    assert clean["body"] == [{"join_token": REDACTED, "name": "w1"}]
    assert clean["status_code"] == 200
    assert record["headers"]["Authorization"] == "Bearer abc"  # the caller's dict is untouched


def test_redact_scrubs_jwts_bearer_values_and_pem_keys_anywhere() -> None:
    clean = redact(
        {
            "reason": f"bad token {JWT} presented",
            "header": "bearer opaque-ray-token.123",
            "list": [JWT, "fine"],
            "entrypoint": f"python run.py --key '{PEM}'",
            "rsa": PEM.replace("PRIVATE KEY", "RSA PRIVATE KEY"),
        }
    )
    text = canonical_json(clean).decode()
    assert "eyJhbGci" not in text and "opaque-ray-token" not in text and "MC4CAQ" not in text
    assert clean["reason"] == f"bad token {REDACTED} presented"
    assert clean["header"] == f"bearer {REDACTED}"
    assert clean["list"] == [REDACTED, "fine"]
    assert clean["entrypoint"] == REDACTED and clean["rsa"] == REDACTED


def test_redact_keeps_ordinary_values() -> None:
    record = {"kind": "cluster", "event": "up", "actor": "spiffe://td/user/admin", "n": 1.5, "ok": True, "x": None}
    assert redact(record) == record


@pytest.mark.parametrize(
    "record",
    [
        {"seq": 1},
        {"time": "now"},
        {"prev": "00"},
        {1: "int key"},
        {"when": object()},
        {"raw": b"bytes"},
        {"inf": float("inf")},
        {JWT: "a key that is a credential"},
    ],
)
def test_redact_refuses_unrecordable_records(record: dict[object, object]) -> None:
    with pytest.raises(AuditRecordError):
        redact(record)  # type: ignore[arg-type]


def test_redact_refuses_non_mapping_and_deep_nesting() -> None:
    with pytest.raises(AuditRecordError):
        redact(["not", "a", "mapping"])  # type: ignore[arg-type]
    deep: dict[str, object] = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]  # type: ignore[assignment]
    with pytest.raises(AuditRecordError):
        redact(deep)
