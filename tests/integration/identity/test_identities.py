"""People and service accounts against a real cluster: enroll, renew, tokens, stock Ray tools, revocation."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509

from raywarden.cluster import runstate
from raywarden.gateway.oidc import oidc_config_path
from raywarden.gateway.tokens import TokenAuthority, load_or_create_token_key, token_key_path
from raywarden.identity.enrollment import MAX_SOURCE_FAILURES
from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import serial_hex
from raywarden.pki.csr import build_csr
from raywarden.pki.keys import generate_private_key
from raywarden.pki.spiffe import SpiffeId
from tests.oidc_support import running_idp
from tests.support import Cluster, run_cli

pytestmark = pytest.mark.integration


# -- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_source_counters(cluster: Cluster) -> Iterator[None]:
    """Refusal tests count failures against 127.0.0.1; start and leave every test with a clean slate."""

    def clean() -> None:
        with sqlite3.connect(cluster.state.identity_db) as db:
            db.execute("DELETE FROM failed_attempts")

    clean()
    yield
    clean()


def _store(cluster: Cluster) -> IdentityStore:
    return IdentityStore.open(cluster.state.identity_db)


def _spiffe(cluster: Cluster, name: str, kind: str = "user") -> str:
    return f"spiffe://{cluster.state.load_config().trust_domain}/{kind}/{name}"


def _add(cluster: Cluster, name: str, *extra: str, kind: str = "user") -> dict[str, Any]:
    result = run_cli(cluster, kind, "add", name, "--group", "developers", "--json", *extra, check=True)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _person_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
    env["RAYWARDEN_HOME"] = str(home)
    env["RAYWARDEN_STATE_DIR"] = str(home / "no-cluster-here")  # this "machine" holds no cluster state
    return env


def _as(home: Path, *args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", *args],
        env=_person_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    result.stderr = " ".join(result.stderr.split())  # Rich wraps long messages at the terminal width
    if check and result.returncode != 0:
        raise AssertionError(
            f"raywarden {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def _login(cluster: Cluster, home: Path, added: dict[str, Any]) -> Path:
    _as(
        home,
        "login",
        cluster.url,
        "--code",
        added["code"],
        "--ca-fingerprint",
        added["ca_fingerprint"],
        "--profile",
        "work",
        check=True,
    )
    return home / "profiles" / "work"


def _cert(profile: Path) -> tuple[str, str]:
    return (str(profile / "client.crt"), str(profile / "client.key"))


def _serial(profile: Path) -> str:
    return serial_hex(x509.load_pem_x509_certificate((profile / "client.crt").read_bytes()))


def _record(cluster: Cluster, resp: requests.Response) -> dict[str, Any]:
    rid = resp.json()["request_id"]
    return next(r for r in cluster.audit_records() if r.get("request_id") == rid and r.get("kind") == "request")


def _events(cluster: Cluster, principal: str) -> list[dict[str, Any]]:
    return [r for r in cluster.audit_records() if r.get("kind") == "identity" and r.get("principal") == principal]


def _enroll(cluster: Cluster, code: str, spiffe: str) -> requests.Response:
    csr = build_csr(generate_private_key(), SpiffeId.parse(spiffe)).decode()
    return requests.post(
        cluster.url + "/raywarden/v1/enroll", json={"code": code, "csr": csr}, verify=cluster.ca, timeout=30
    )


def _bearer(cluster: Cluster, token: str, path: str = "/api/jobs/") -> requests.Response:
    return requests.get(cluster.url + path, headers={"Authorization": f"Bearer {token}"}, verify=cluster.ca, timeout=30)


# -- the done criterion ------------------------------------------------------------------------------------------


def test_second_person_enrolls_submits_with_both_clis_and_loses_access(cluster: Cluster, tmp_path: Path) -> None:
    added = _add(cluster, "bob")
    home = tmp_path / "bob-machine"
    bob = _spiffe(cluster, "bob")

    # A wrong pin aborts before the code is sent: the code stays unused and no enrollment was attempted.
    wrong = _as(home, "login", cluster.url, "--code", added["code"], "--ca-fingerprint", "ab" * 32)
    assert wrong.returncode != 0 and "not the pinned" in wrong.stderr and "nothing was sent" in wrong.stderr
    assert _store(cluster).enrollments_of(bob)[0]["used_at"] is None
    assert not [
        r
        for r in cluster.audit_records()
        if r.get("path") == "/raywarden/v1/enroll" and r.get("enrollment_id") == added["enrollment_id"]
    ]

    profile = _login(cluster, home, added)
    assert (profile / "client.key").stat().st_mode & 0o777 == 0o600
    meta = json.loads((profile / "profile.json").read_text())
    assert meta["identity"] == bob and meta["state_dir"] is None and meta["gateway_url"] == cluster.url
    assert [e["event"] for e in _events(cluster, bob)][:3] == ["user.create", "enrollment.create", "enroll"]
    assert all(e["actor"] for e in _events(cluster, bob))

    submitted = _as(home, "job", "submit", "--", "python", "-c", "print('hello from bob')", check=True)
    assert "hello from bob" in submitted.stdout

    token = _as(home, "token", check=True).stdout.strip()
    assert token.count(".") == 2
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
    stock = subprocess.run(
        [
            ray,
            "job",
            "submit",
            "--address",
            cluster.url,
            "--headers",
            json.dumps({"Authorization": f"Bearer {token}"}),
            "--verify",
            str(profile / "access-ca.crt"),
            "--",
            "python",
            "-c",
            "print('stock ray ok')",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert stock.returncode == 0, stock.stdout + stock.stderr
    assert "stock ray ok" in stock.stdout

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(
        cluster.url, headers={"Authorization": f"Bearer {token}"}, verify=str(profile / "access-ca.crt")
    )
    job = client.submit_job(entrypoint="python -c \"print('sdk ok')\"")
    deadline = time.monotonic() + 120
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED and "sdk ok" in client.get_job_logs(job)
    owner = next(j for j in cluster.ray_jobs() if j.get("submission_id") == job)["metadata"]["raywarden.owner"]
    assert owner == bob

    run_cli(cluster, "user", "disable", "bob", check=True)
    disabled_at = time.monotonic()
    by_cert = requests.get(cluster.url + "/api/jobs/", cert=_cert(profile), verify=cluster.ca, timeout=30)
    by_token = _bearer(cluster, token)
    assert time.monotonic() - disabled_at < 1.0
    assert by_cert.status_code == 401 and by_token.status_code == 401
    assert by_cert.json()["error"] == by_token.json()["error"] == "authentication failed"
    assert "revoked" in _record(cluster, by_cert)["reason"] and "revoked" in _record(cluster, by_token)["reason"]
    refused = _as(home, "job", "list")
    assert refused.returncode != 0 and "401" in refused.stderr
    disable = next(e for e in _events(cluster, bob) if e["event"] == "disable")
    assert disable["actor"].startswith("local:") and disable["revoked"]["certificates"] >= 1


# -- enrollment refusals -----------------------------------------------------------------------------------------


def _refused(cluster: Cluster, resp: requests.Response, status: int, reason: str, spiffe: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == "enrollment refused"
    assert "certificate_pem" not in resp.json()
    assert reason in _record(cluster, resp)["reason"]
    assert not _store(cluster).certificates_of(spiffe), "a refused enrollment must issue nothing"


def test_enrollment_refusals(cluster: Cluster) -> None:
    carol = _add(cluster, "carol")
    first = _enroll(cluster, carol["code"], carol["spiffe_id"])
    assert first.status_code == 200 and first.json()["identity"] == carol["spiffe_id"]
    replay = _enroll(cluster, carol["code"], carol["spiffe_id"])
    assert replay.status_code == 401 and "already used" in _record(cluster, replay)["reason"]
    assert len(_store(cluster).certificates_of(carol["spiffe_id"])) == 1

    dave = _add(cluster, "dave", "--code-ttl", "1s")
    time.sleep(1.2)
    _refused(cluster, _enroll(cluster, dave["code"], dave["spiffe_id"]), 401, "expired", dave["spiffe_id"])

    erin = _add(cluster, "erin")
    _store(cluster).set_disabled(erin["spiffe_id"], True)  # disabled, code not (yet) revoked
    _refused(cluster, _enroll(cluster, erin["code"], erin["spiffe_id"]), 401, "disabled principal", erin["spiffe_id"])
    run_cli(cluster, "user", "disable", "erin", check=True)  # the command also revokes the code
    _refused(cluster, _enroll(cluster, erin["code"], erin["spiffe_id"]), 401, "revoked", erin["spiffe_id"])

    frank = _add(cluster, "frank")
    other = _spiffe(cluster, "admin")
    resp = _enroll(cluster, frank["code"], other)
    _refused(cluster, resp, 403, "CSR asks for", frank["spiffe_id"])
    assert not _store(cluster).certificates_of(other)[-1:] or all(
        c["issued_at"] < frank["expires_at"] for c in _store(cluster).certificates_of(other)
    )
    assert _enroll(cluster, frank["code"], frank["spiffe_id"]).status_code == 200  # the code was not burnt

    secret_swapped = frank["code"].rsplit(":", 1)[0] + ":" + "A" * 32
    _refused(
        cluster, _enroll(cluster, secret_swapped, frank["spiffe_id"]), 401, "wrong secret", _spiffe(cluster, "nobody")
    )


def test_enrollment_failures_limited_per_source(cluster: Cluster) -> None:
    grace = _add(cluster, "grace")
    for i in range(MAX_SOURCE_FAILURES):
        assert _enroll(cluster, f"user:grace:{i:016x}:guess", grace["spiffe_id"]).status_code == 401
    limited = _enroll(cluster, grace["code"], grace["spiffe_id"])
    assert limited.status_code == 429 and "too many" in _record(cluster, limited)["reason"]
    assert not _store(cluster).certificates_of(grace["spiffe_id"])


# -- renewal, revocation, expiry -----------------------------------------------------------------------------


def test_renewal_revocation_and_expiry(cluster: Cluster, tmp_path: Path) -> None:
    added = _add(cluster, "heidi")
    home = tmp_path / "heidi-machine"
    profile = _login(cluster, home, added)
    heidi = added["spiffe_id"]

    # A certificate with less than a third of its life left is renewed by the next command.
    short = cluster.issue("heidi", lifetime=__import__("datetime").timedelta(minutes=1))
    shutil.copy(short[0], profile / "client.crt")
    shutil.copy(short[1], profile / "client.key")
    old_serial = _serial(profile)
    issued = json.loads(_as(home, "token", "--ttl", "5m", "--json", check=True).stdout)
    new_serial = _serial(profile)
    assert new_serial != old_serial
    renewals = [e for e in _events(cluster, heidi) if e["event"] == "cert.renew"]
    assert renewals and renewals[-1]["serial"] == new_serial and renewals[-1]["actor"] == heidi
    assert issued["expires_at"] and len(issued["jti"]) == 32

    # Revoke the token id: refused on the next request, the certificate still works.
    assert _bearer(cluster, issued["token"]).status_code == 200
    run_cli(cluster, "revoke", "token", issued["jti"], check=True)
    resp = _bearer(cluster, issued["token"])
    assert resp.status_code == 401 and "revoked" in _record(cluster, resp)["reason"]
    assert requests.get(cluster.url + "/api/jobs/", cert=_cert(profile), verify=cluster.ca, timeout=30).ok

    # Revoke the certificate serial: refused on the next request.
    run_cli(cluster, "revoke", "cert", new_serial, check=True)
    resp = requests.get(cluster.url + "/api/jobs/", cert=_cert(profile), verify=cluster.ca, timeout=30)
    assert resp.status_code == 401 and "revoked" in _record(cluster, resp)["reason"]
    assert {e["event"] for e in _events(cluster, heidi)} >= {"revoke.token", "revoke.cert", "token.issue"}

    # An expired certificate: the CLI says so and what to do.
    expired = cluster.issue("heidi", lifetime=__import__("datetime").timedelta(minutes=-1))
    shutil.copy(expired[0], profile / "client.crt")
    shutil.copy(expired[1], profile / "client.key")
    result = _as(home, "job", "list")
    assert result.returncode != 0 and "expired" in result.stderr and "login" in result.stderr


def test_bearer_cannot_mint_or_renew(cluster: Cluster) -> None:
    _add(cluster, "ivan", kind="sa")
    token = run_cli(cluster, "sa", "token", "ivan", "--ttl", "10m", check=True).stdout.strip()
    assert _bearer(cluster, token).status_code == 200
    before = len(_store(cluster).tokens_of(_spiffe(cluster, "ivan", "sa")))
    minted = requests.post(
        cluster.url + "/raywarden/v1/token",
        json={},
        verify=cluster.ca,
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert minted.status_code == 403 and "token" not in minted.json()
    csr = build_csr(generate_private_key(), SpiffeId.parse(_spiffe(cluster, "ivan", "sa"))).decode()
    renewed = requests.post(
        cluster.url + "/raywarden/v1/renew",
        json={"csr": csr},
        verify=cluster.ca,
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert renewed.status_code == 403 and "certificate_pem" not in renewed.json()
    assert len(_store(cluster).tokens_of(_spiffe(cluster, "ivan", "sa"))) == before
    assert not _store(cluster).certificates_of(_spiffe(cluster, "ivan", "sa"))


# -- bad bearer tokens at the gateway ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(cluster: Cluster, **change: Any) -> str:
    good = run_cli(cluster, "sa", "token", "judy", "--ttl", "10m", check=True).stdout.strip()
    claims = jwt.decode(good, options={"verify_signature": False})
    claims.update(change)
    kid = TokenAuthority.for_state(cluster.state, cluster.state.load_config()).kid
    return jwt.encode(
        claims, load_or_create_token_key(token_key_path(cluster.state)), algorithm="EdDSA", headers={"kid": kid}
    )


def test_bad_tokens_get_generic_401_and_precise_audit(cluster: Cluster) -> None:
    _add(cluster, "judy", kind="sa")
    good = run_cli(cluster, "sa", "token", "judy", check=True).stdout.strip()
    head, payload, sig = good.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered_claims["sub"] = _spiffe(cluster, "admin")
    now = int(time.time())
    cases = {
        "algorithm 'none' refused": _b64(b'{"alg":"none","typ":"JWT"}') + "." + payload + ".",
        "signature does not verify": f"{head}.{_b64(json.dumps(tampered_claims).encode())}.{sig}",
        "audience": _forged(cluster, aud="raywarden-gateway:another-cluster"),
        "issuer is wrong": _forged(cluster, iss="raywarden:elsewhere"),
        "expired": _forged(cluster, exp=now - 120),
        "not yet valid": _forged(cluster, nbf=now + 600),
        "unknown issuer": jwt.encode({"iss": "x", "sub": "y"}, "k" * 32, algorithm="HS256", headers={"kid": "nope"}),
    }
    for reason, token in cases.items():
        resp = _bearer(cluster, token)
        assert resp.status_code == 401 and resp.json()["error"] == "authentication failed", reason
        assert resp.headers["www-authenticate"].startswith("Bearer")
        record = _record(cluster, resp)
        assert reason in record["reason"] and record["decision"] == "deny"
        assert token not in json.dumps(record)


# -- two trust roots -----------------------------------------------------------------------------------------------


def test_user_certificate_useless_against_ray_grpc(cluster: Cluster, tmp_path: Path) -> None:
    import grpc

    added = _add(cluster, "mallory")
    profile = _login(cluster, tmp_path / "mallory-machine", added)
    run = runstate.read_run_state(cluster.state)
    assert run is not None
    root = cluster.state.internal_ca_cert.read_bytes()
    token = [("authorization", f"Bearer {cluster.ray_token()}")]

    def call(cert: Path, key: Path) -> grpc.StatusCode | None:
        creds = grpc.ssl_channel_credentials(root, key.read_bytes(), cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{run.ports.gcs}", creds) as channel:
            try:
                channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=5, metadata=token)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
        return None

    # The node certificate (internal CA) works, so the channel set-up itself is right...
    assert call(cluster.state.node_cert, cluster.state.node_key) is None
    # ...and a user certificate from the access CA is refused in the handshake, even with Ray's token.
    assert call(profile / "client.crt", profile / "client.key") == grpc.StatusCode.UNAVAILABLE


def test_node_certificate_never_authenticates_a_person(cluster: Cluster) -> None:
    before = len(cluster.audit_records())
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(
            cluster.url + "/api/jobs/",
            cert=(str(cluster.state.node_cert), str(cluster.state.node_key)),
            verify=cluster.ca,
            timeout=30,
        ).raise_for_status()
    deadline = time.monotonic() + 5
    while not any(r.get("kind") == "tls" for r in cluster.audit_records()[before:]):
        assert time.monotonic() < deadline, "refused handshake not audited"
        time.sleep(0.05)


# -- OIDC through the gateway -------------------------------------------------------------------------------------


def test_oidc_id_token_through_the_gateway(cluster: Cluster) -> None:
    path = oidc_config_path(cluster.state)
    with running_idp() as idp:
        idp.add_key("k1")
        path.write_text(json.dumps(idp.config()))
        try:
            ok = _bearer(cluster, idp.id_token(preferred_username="oidc-oscar"))
            assert ok.status_code == 200, ok.text
            # The issuer's people are in its namespace (its host and port), apart from any local oidc-oscar.
            namespace = "127.0.0.1-" + idp.issuer.rsplit(":", 1)[1]
            oscar = f"spiffe://{cluster.state.load_config().trust_domain}/oidc/{namespace}/oidc-oscar"
            allowed = [r for r in cluster.audit_records() if r.get("principal") == oscar]
            assert allowed and allowed[-1]["auth_method"] == "oidc"
            assert not any(r.get("principal") == _spiffe(cluster, "oidc-oscar") for r in cluster.audit_records())
            # `--principal NAMESPACE/NAME` names them on the command line.
            tail = run_cli(cluster, "audit", "tail", "--principal", f"{namespace}/oidc-oscar", "--json", check=True)
            assert oscar in tail.stdout
            resp = _bearer(cluster, idp.id_token(audience="another-app"))
            assert resp.status_code == 401 and "audience" in _record(cluster, resp)["reason"]
        finally:
            path.unlink()


# -- administration commands ---------------------------------------------------------------------------------------


def test_admin_commands(cluster: Cluster, tmp_path: Path) -> None:
    added = _add(cluster, "kim")
    assert added["code"].startswith("user:kim:") and added["login_command"].startswith("raywarden login https://")
    users = json.loads(run_cli(cluster, "user", "list", "--json", check=True).stdout)
    assert any(u["name"] == "kim" and u["groups"] == ["developers"] for u in users)
    changed = json.loads(
        run_cli(
            cluster, "user", "groups", "kim", "--add", "viewers", "--remove", "developers", "--json", check=True
        ).stdout
    )
    assert changed["groups"] == ["viewers"]
    shown = json.loads(run_cli(cluster, "user", "show", "kim", "--json", check=True).stdout)
    assert shown["enrollments"][0]["used_at"] is None and "code" not in json.dumps(shown["enrollments"])
    assert "disabled" in run_cli(cluster, "user", "disable", "kim", check=True).stdout.lower()
    again = json.loads(run_cli(cluster, "user", "enable", "kim", "--json", check=True).stdout)
    assert again["code"] != added["code"] and not again["disabled"]
    profile = _login(cluster, tmp_path / "kim-machine", again)
    assert profile.is_dir()
    listed = json.loads(_as(tmp_path / "kim-machine", "profile", "list", "--json", check=True).stdout)
    assert listed == [{**listed[0], "name": "work", "current": True, "local_admin": False}]
    used = _as(tmp_path / "kim-machine", "profile", "use", "work", "--json", check=True)
    assert json.loads(used.stdout)["current"] == "work"
    sas = json.loads(run_cli(cluster, "sa", "list", "--json", check=True).stdout)
    assert all(s["kind"] == "sa" for s in sas)
    missing = run_cli(cluster, "user", "show", "nobody-here")
    assert missing.returncode != 0 and "hint:" in missing.stderr
    bad = run_cli(cluster, "sa", "token", "kim", "--ttl", "30d")
    assert bad.returncode != 0
    events = {e["event"] for e in _events(cluster, added["spiffe_id"])}
    assert events >= {"user.create", "enrollment.create", "groups.change", "disable", "enable", "enroll"}
