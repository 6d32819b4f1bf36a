"""The head's side of node certificate renewal on a real state dir (CAs, SQLite registry): one restart lease at a
time, the node's own address and secret only, certificates from the internal CA's current files with the
bundle Ray must trust; and the node agent's checks of what the head answers."""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from raywarden.cluster import admission, node_renewal, runstate, worker_ray
from raywarden.cluster.agent import NodeAgent
from raywarden.cluster.certlife import Lifetime
from raywarden.cluster.nodestate import NodeConfig
from raywarden.cluster.ports import RayPorts, WorkerPorts
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import PKIError
from raywarden.identity.node_records import NodeRegistryError
from raywarden.identity.nodes import NodeRegistry
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, serial_hex
from raywarden.pki.keys import generate_private_key
from raywarden.pki.spiffe import SpiffeId
from raywarden.secret import Secret
from raywarden.state import StateDir

pytestmark = pytest.mark.unit
TD = "renew.test"
HEAD_IP = "10.9.0.2"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    target = StateDir(tmp_path / "state")
    config = ClusterConfig(
        trust_domain=TD, listen=Listen(host="10.9.0.2", port=18443), node_cert_ttl=dt.timedelta(minutes=3)
    )
    init_state(target, config, admin_name="admin", profile_name="renew")
    # A head running in multi-node mode, as `up --node-ip` records it.
    run = runstate.RunState(
        ray_pid=os.getpid(),
        gateway_pid=os.getpid(),
        ports=RayPorts.allocate(),
        listen=config.listen,
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        firewall="installed (multi-node)",
        node_ip=HEAD_IP,
    )
    runstate.write_run_state(target, run)
    return target


Enroll = Callable[..., tuple[NodeRegistry, Secret]]


def enroll(state: StateDir, name: str, address: str) -> tuple[NodeRegistry, Secret]:
    """A node as `join` leaves it in the registry (without touching the host's firewall)."""
    registry = NodeRegistry.open(state.identity_db)
    config = state.load_config()
    cert = admission.issue_node_certificate(
        state, config, generate_private_key().public_key(), SpiffeId(TD, "node", name), address
    )
    secret = Secret(f"secret-of-{name}-0123456789")
    registry.add_node(
        name=name,
        spiffe_id=str(SpiffeId(TD, "node", name)),
        address=address,
        serial=serial_hex(cert),
        not_after=cert.not_valid_after_utc,
        ports=WorkerPorts.allocate("127.0.0.1").model_dump(),
        node_secret=secret,
        token_id="t" * 16,
        cert_issued_at=Lifetime.of(cert).issued,
    )
    return registry, secret


def csr(key: ec.EllipticCurvePrivateKey | None = None, name: str = "w1") -> str:
    key = key or generate_private_key()
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def tampered_csr() -> str:
    """A CSR whose signature no longer matches (its last signature byte flipped)."""
    der = bytearray(x509.load_pem_x509_csr(csr().encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def ask(state: StateDir, registry: NodeRegistry, name: str, secret: Secret, source: str, **extra: Any) -> Any:
    request = node_renewal.RenewRequest(name=name, node_secret=secret.reveal(), csr_pem=extra.pop("csr", csr()))
    return node_renewal.renew(state, state.load_config(), registry, request, source)


def report(registry: NodeRegistry, name: str, secret: Secret, source: str, ok: bool = True, **extra: Any) -> Any:
    restart = node_renewal.RestartReport(name=name, node_secret=secret.reveal(), serial="ab", ok=ok, **extra)
    return node_renewal.restarted(registry, restart, source)


def test_a_renewal_issues_for_the_node_its_address_and_the_current_ca_with_the_bundle(state: StateDir) -> None:
    registry, secret = enroll(state, "w1", "10.9.0.3")
    before = registry.get("w1")
    assert before is not None
    key = generate_private_key()
    body, audit = ask(state, registry, "w1", secret, "10.9.0.3", csr=csr(key))
    cert = x509.load_pem_x509_certificate(body["node_cert_pem"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/node/w1"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.9.0.3"]
    assert Lifetime.of(cert).total == dt.timedelta(minutes=3)
    assert body["internal_ca_pem"] == state.internal_ca_cert.read_text()
    assert body["peers"] == [HEAD_IP] and body["drain_timeout_s"] == 600.0
    after = registry.get("w1")
    assert after is not None and after.serial == serial_hex(cert) == audit["serial"]
    assert audit["event"] == "node.cert.renew" and audit["old_serial"] == before.serial
    assert after.renewal.renewed_at is not None
    lease = registry.current_lease()
    assert lease is not None and lease.node == "w1"
    # The lease covers the drain (at most what is left of the old certificate) and the restart.
    assert (
        lease.expires_at - lease.granted_at <= (dt.timedelta(minutes=3) + node_renewal.RESTART_BUDGET).total_seconds()
    )


def test_the_bundle_travels_with_every_renewal_so_nodes_learn_a_new_ca(state: StateDir) -> None:
    registry, secret = enroll(state, "w1", "10.9.0.3")
    successor = CertificateAuthority.create("internal", TD, years=1)
    bundle = state.internal_ca_cert.read_bytes() + cert_pem(successor.certificate)
    state.internal_ca_bundle.write_bytes(bundle)
    body, _ = ask(state, registry, "w1", secret, "10.9.0.3")
    assert body["internal_ca_pem"].encode() == bundle
    # Signing follows the current CA files (a rotation switches them).
    successor.save(state.internal_ca_cert, state.internal_ca_key)
    report(registry, "w1", secret, "10.9.0.3")
    with registry._connect() as db:  # the next renewal, a while later
        db.execute("UPDATE node_renewals SET renewed_at = '2000-01-01T00:00:00+00:00'")
    body, _ = ask(state, registry, "w1", secret, "10.9.0.3")
    x509.load_pem_x509_certificate(body["node_cert_pem"].encode()).verify_directly_issued_by(successor.certificate)


def test_one_node_restarts_at_a_time(state: StateDir) -> None:
    registry, first = enroll(state, "w1", "10.9.0.3")
    _, second = enroll(state, "w2", "10.9.0.4")
    ask(state, registry, "w1", first, "10.9.0.3")
    with pytest.raises(NodeRegistryError) as busy:
        ask(state, registry, "w2", second, "10.9.0.4")
    assert busy.value.status == 409 and "held by node w1" in busy.value.reason
    assert busy.value.retry_after_s is not None and 1 <= busy.value.retry_after_s <= 15
    # Its certificate did not change while it waited.
    w2 = registry.get("w2")
    assert w2 is not None and w2.renewal.renewed_at is None
    body, audit = report(registry, "w1", first, "10.9.0.3", drain="complete", drain_seconds=1.5)
    assert body == {"ok": True, "failures": 0} and audit["event"] == "node.rejoin" and audit["lease_held"] is True
    ask(state, registry, "w2", second, "10.9.0.4")
    current = registry.current_lease()
    assert current is not None and current.node == "w2"


def test_a_lease_whose_holder_went_silent_expires(state: StateDir) -> None:
    registry, first = enroll(state, "w1", "10.9.0.3")
    _, second = enroll(state, "w2", "10.9.0.4")
    registry.acquire_lease("w1", dt.timedelta(seconds=-1))  # granted, and already past its end
    assert registry.current_lease() is None
    ask(state, registry, "w2", second, "10.9.0.4")
    # The silent node's late report returns nothing it still held, and is recorded.
    _, audit = report(registry, "w1", first, "10.9.0.3")
    assert audit["lease_held"] is False
    current = registry.current_lease()
    assert current is not None and current.node == "w2"


@pytest.mark.parametrize(
    ("name", "secret", "source", "status", "reason"),
    [
        ("w1", "wrong-secret", "10.9.0.3", 401, "wrong node secret"),
        ("w9", "secret-of-w1-0123456789", "10.9.0.3", 401, "unknown"),
        ("w1", "secret-of-w1-0123456789", "10.9.0.4", 403, "came from 10.9.0.4"),
        ("w1", "secret-of-w1-0123456789", HEAD_IP, 403, "came from"),
    ],
)
def test_only_the_node_from_its_own_address_renews(
    state: StateDir, name: str, secret: str, source: str, status: int, reason: str
) -> None:
    registry, _ = enroll(state, "w1", "10.9.0.3")
    before = registry.get("w1")
    with pytest.raises(NodeRegistryError) as refused:
        ask(state, registry, name, Secret(secret), source)
    assert refused.value.status == status and reason in refused.value.reason
    assert registry.get("w1") == before and registry.current_lease() is None
    with pytest.raises(NodeRegistryError):
        report(registry, name, Secret(secret), source)


def test_a_revoked_or_departed_node_renews_nothing(state: StateDir) -> None:
    registry, secret = enroll(state, "w1", "10.9.0.3")
    registry.revoke("w1", revoked_by="test", reason="test")
    with pytest.raises(NodeRegistryError) as refused:
        ask(state, registry, "w1", secret, "10.9.0.3")
    assert refused.value.status == 401
    registry2, secret2 = enroll(state, "w2", "10.9.0.4")
    registry2.mark_left("w2")
    with pytest.raises(NodeRegistryError):
        ask(state, registry2, "w2", secret2, "10.9.0.4")


def test_a_second_renewal_moments_later_is_refused_with_the_wait(state: StateDir) -> None:
    registry, secret = enroll(state, "w1", "10.9.0.3")
    ask(state, registry, "w1", secret, "10.9.0.3")
    report(registry, "w1", secret, "10.9.0.3")
    with pytest.raises(NodeRegistryError) as refused:
        ask(state, registry, "w1", secret, "10.9.0.3")
    # A tenth of the 3-minute lifetime between two certificates.
    assert refused.value.status == 429 and refused.value.retry_after_s is not None
    assert 0 < refused.value.retry_after_s <= 18


@pytest.mark.parametrize(
    "bad_csr",
    [
        "not a csr",
        csr(ec.generate_private_key(ec.SECP384R1())),  # not P-256
        tampered_csr(),
    ],
)
def test_a_bad_csr_is_refused_and_takes_no_lease(state: StateDir, bad_csr: str) -> None:
    registry, secret = enroll(state, "w1", "10.9.0.3")
    with pytest.raises(NodeRegistryError) as refused:
        ask(state, registry, "w1", secret, "10.9.0.3", csr=bad_csr)
    assert refused.value.status == 400 and registry.current_lease() is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"name": "w1", "node_secret": "s", "csr_pem": "x", "extra": 1}',
        b'{"name": "../w1", "node_secret": "s", "csr_pem": "x"}',
        b'{"name": "w1", "node_secret": "' + b"s" * 200 + b'", "csr_pem": "x"}',
        b'{"name": "w1", "node_secret": "s", "csr_pem": "x", "serial": "zz"}',
    ],
)
def test_malformed_renewal_requests_are_400s(body: bytes) -> None:
    with pytest.raises(NodeRegistryError) as refused:
        admission.parse(node_renewal.RenewRequest, body)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "w1", "node_secret": "s", "serial": "ab", "ok": true, "drain_seconds": 1e400}',
        b'{"name": "w1", "node_secret": "s", "serial": "ab", "ok": true, "drain": "forever"}',
        b'{"name": "w1", "node_secret": "s", "serial": "ab", "ok": "yes please"}',
        b'{"name": "w1", "node_secret": "s", "serial": "ab", "ok": false, "error": "' + b"e" * 600 + b'"}',
    ],
)
def test_malformed_restart_reports_are_400s(body: bytes) -> None:
    with pytest.raises(NodeRegistryError) as refused:
        admission.parse(node_renewal.RestartReport, body)
    assert refused.value.status == 400


def test_failed_restarts_are_counted_until_one_succeeds(state: StateDir) -> None:
    registry, secret = enroll(state, "w1", "10.9.0.3")
    for expected in (1, 2):
        body, audit = report(registry, "w1", secret, "10.9.0.3", ok=False, error="Ray did not register")
        assert body["failures"] == expected and audit["event"] == "node.restart_failed"
    node = registry.get("w1")
    assert node is not None and node.renewal.failures == 2 and node.renewal.last_error == "Ray did not register"
    assert node.public()["renew_failures"] == 2
    report(registry, "w1", secret, "10.9.0.3")
    node = registry.get("w1")
    assert node is not None and node.renewal.failures == 0 and node.renewal.last_error is None


# -- the node agent's checks of the answer -------------------------------------------------------------------


def _agent_case(state: StateDir, tmp_path: Path) -> tuple[NodeAgent, NodeConfig, ec.EllipticCurvePrivateKey]:
    config = NodeConfig(
        head_url=f"https://{HEAD_IP}:18443",
        name="w1",
        spiffe_id=f"spiffe://{TD}/node/w1",
        address="10.9.0.3",
        trust_domain=TD,
        gcs_address=f"{HEAD_IP}:6379",
        head_ip=HEAD_IP,
        peers=[HEAD_IP],
        ports=WorkerPorts.allocate("127.0.0.1"),
        access_ca_fingerprint="0" * 64,
        joined_at="now",
    )
    return NodeAgent(tmp_path / "node"), config, generate_private_key()


def _answer(
    state: StateDir,
    key: ec.EllipticCurvePrivateKey,
    *,
    name: str = "w1",
    address: str = "10.9.0.3",
    ca: CertificateAuthority | None = None,
    lifetime: dt.timedelta = dt.timedelta(minutes=3),
) -> dict[str, str]:
    authority = ca or CertificateAuthority.load("internal", TD, state.internal_ca_cert, state.internal_ca_key)
    cert = authority.issue(
        key.public_key(), SpiffeId(TD, "node", name), lifetime=lifetime, server=True, ip_addresses=(address,)
    )
    return {"node_cert_pem": cert_pem(cert).decode(), "internal_ca_pem": state.internal_ca_cert.read_text()}


def test_the_agent_takes_a_certificate_for_its_key_name_and_address_from_the_bundle(
    state: StateDir, tmp_path: Path
) -> None:
    agent, config, key = _agent_case(state, tmp_path)
    cert = agent._check_answer(_answer(state, key), key.public_key(), config)
    assert str(cert.serial_number)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": True}, "not for this node's new key"),
        ({"name": "w2"}, "names spiffe://renew.test/node/w2"),
        ({"address": "10.9.0.9"}, "does not name this node's address"),
        ({"ca": True}, "not issued by a CA of the internal CA bundle"),
        ({"lifetime": dt.timedelta(minutes=-1)}, "not valid now"),
        ({"garbage": True}, "holds no certificate"),
    ],
)
def test_the_agent_refuses_any_other_certificate(
    state: StateDir, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    agent, config, key = _agent_case(state, tmp_path)
    other_key = generate_private_key()
    answer = _answer(
        state,
        other_key if change.get("key") else key,
        name=change.get("name", "w1"),
        address=change.get("address", "10.9.0.3"),
        ca=CertificateAuthority.create("internal", TD, years=1) if change.get("ca") else None,
        lifetime=change.get("lifetime", dt.timedelta(minutes=3)),
    )
    if change.get("garbage"):
        answer["node_cert_pem"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(PKIError, match=message):
        agent._check_answer(answer, key.public_key(), config)


def test_the_drain_window_leaves_time_to_stop_before_the_old_certificate_expires(state: StateDir) -> None:
    internal = CertificateAuthority.load("internal", TD, state.internal_ca_cert, state.internal_ca_key)

    def cert(lifetime: dt.timedelta) -> x509.Certificate:
        return internal.issue(generate_private_key().public_key(), SpiffeId(TD, "node", "w"), lifetime=lifetime)

    # 3 minutes: renewal at 2:00, so 60 s left; 20 s of those are for stopping.
    assert worker_ray.drain_window(cert(dt.timedelta(minutes=3)), 600) == pytest.approx(40, abs=1)
    # 30 days: ten days left at renewal; the head's drain timeout bounds it.
    assert worker_ray.drain_window(cert(dt.timedelta(days=30)), 600) == 600
    assert worker_ray.drain_window(cert(dt.timedelta(seconds=30)), 600) == 0


def test_a_node_learns_the_access_cas_the_head_trusts_now(state: StateDir, tmp_path: Path) -> None:
    from raywarden.cluster.nodestate import NodeState
    from raywarden.cluster.worker import learn_access_cas

    registry, secret = enroll(state, "w1", "10.9.0.3")
    successor = CertificateAuthority.create("access", TD, years=1)
    both = state.access_ca_cert.read_bytes() + cert_pem(successor.certificate)
    state.access_ca_bundle.write_bytes(both)
    answer = admission.peers(state, registry, admission.NodeAuth(name="w1", node_secret=secret.reveal()))
    assert answer["access_ca_pem"].encode() == both
    node = NodeState(tmp_path / "node")
    (node.root / "pki").mkdir(parents=True)
    node.access_ca_cert.write_bytes(state.access_ca_cert.read_bytes())
    learn_access_cas(node, answer)
    assert node.access_ca_cert.read_bytes() == both
    # Nothing that is not a set of CA certificates replaces what the node trusts.
    leaf = admission.issue_node_certificate(
        state, state.load_config(), generate_private_key().public_key(), SpiffeId(TD, "node", "x"), "10.9.0.9"
    )
    for bad in ("", "garbage", cert_pem(leaf).decode(), both.decode() + cert_pem(leaf).decode()):
        learn_access_cas(node, {"access_ca_pem": bad})
        assert node.access_ca_cert.read_bytes() == both
    learn_access_cas(node, {})
    assert node.access_ca_cert.read_bytes() == both
