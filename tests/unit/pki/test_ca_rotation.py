"""CA rotation on the head, checked with real TLS handshakes against the files verifiers load
(``trusted_ca_file``): both CAs are trusted during the overlap, the old one nowhere after it."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from raywarden.client.profile import load_profile
from raywarden.cluster.setup import init_state, renew_gateway_certificate_if_due
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import PKIError
from raywarden.identity.nodes import NodeRegistry
from raywarden.identity.store import IdentityStore
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, fingerprint, load_cert, serial_hex
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.rollout import full_status, rotate
from raywarden.pki.rotation import issued_by
from raywarden.pki.spiffe import SpiffeId
from raywarden.pki.trust import CaFiles, CurrentCA, cluster_id, read_rotation, trust_answer
from raywarden.secret import Secret
from raywarden.state import StateDir, trusted_ca_file
from tests.unit.gateway.conftest import read_records

pytestmark = pytest.mark.unit

TD = "rotate.test"
WEEK = dt.timedelta(days=7)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    made = StateDir(tmp_path / "state")
    init_state(
        made,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=1)),
        admin_name="admin",
        profile_name="a",
    )
    return made


def issue(state: StateDir, role: str, name: str, folder: Path, *, record: bool = True) -> tuple[str, str]:
    """A leaf from the role's current CA, written to files (a person's certificate, or a node's)."""
    config = state.load_config()
    authority = CaFiles(state, role).load_current(config.trust_domain)  # type: ignore[arg-type]
    key = generate_private_key()
    kind = "user" if role == "access" else "node"
    spiffe = SpiffeId(TD, kind, name)  # type: ignore[arg-type]
    cert = authority.issue(
        key.public_key(), spiffe, lifetime=dt.timedelta(hours=12), server=True, ip_addresses=("127.0.0.1",)
    )
    if record and role == "access":
        store = IdentityStore.open(state.identity_db)
        if store.get(str(spiffe)) is None:
            store.add_principal(spiffe, [], created_by="test")
        store.record_certificate(serial_hex(cert), str(spiffe), cert.not_valid_after_utc, issuer=authority.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.crt").write_bytes(cert_pem(cert))
    (folder / f"{name}.key").write_bytes(private_key_pem(key))
    return str(folder / f"{name}.crt"), str(folder / f"{name}.key")


@pytest.fixture
def handshake() -> Iterator[object]:
    yield _handshake


def _handshake(server: tuple[str, str], verify_file: Path, client: tuple[str, str], client_trusts: Path) -> bool:
    """A mutual-TLS handshake over loopback; True when the server accepted the client's certificate."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*server)
    server_ctx.load_verify_locations(cafile=str(verify_file))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cafile=str(client_trusts))
    client_ctx.load_cert_chain(*client)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    outcome: dict[str, bool] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
                outcome["server"] = True
        except (ssl.SSLError, OSError):
            outcome["server"] = False

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.recv(2) == b"ok"
    except (ssl.SSLError, OSError):
        return False
    finally:
        thread.join(10)
        listener.close()


# -- access CA -------------------------------------------------------------------------------------------------


def test_access_rotation_trusts_both_during_the_overlap_and_only_the_new_one_after(
    state: StateDir, tmp_path: Path
) -> None:
    config = state.load_config()
    old_fp = fingerprint(load_cert(state.access_ca_cert))
    signer = CurrentCA(state, "access", TD)
    assert signer.get().fingerprint == old_fp
    identity_before = cluster_id(state)
    alice_old = issue(state, "access", "alice", tmp_path / "old")

    [step] = rotate(state, config, "access", actor="test", overlap=WEEK)
    new_fp = fingerprint(load_cert(state.access_ca_cert))
    assert (step.event, step.old_sha256, step.new_sha256) == ("ca.rotate.start", old_fp, new_fp) and new_fp != old_fp
    assert trusted_ca_file(state, "access") == state.access_ca_bundle
    assert [fingerprint(c) for c in x509.load_pem_x509_certificates(state.access_ca_bundle.read_bytes())] == [
        new_fp,
        old_fp,
    ]
    assert signer.get().fingerprint == new_fp, "a running signer picks up the new CA"
    assert cluster_id(state) == identity_before, "bearer tokens stay bound to the same cluster id"
    # The gateway keeps its certificate from the old CA for now; the local admin profile trusts both.
    assert issued_by(load_cert(state.gateway_cert), CaFiles(state, "access").previous())  # type: ignore[arg-type]
    admin = load_profile("a")
    assert [fingerprint(c) for c in admin.trusted_cas()] == [new_fp, old_fp]
    answer = trust_answer(state, TD)
    assert answer["sha256"] == new_fp and len(answer["trusted_pem"]) == 2 and len(answer["rollovers"]) == 1

    # Its automatic renewal (gateway/renewal.py) during the overlap stays with the old CA too.
    before = serial_hex(load_cert(state.gateway_cert))
    renewed = renew_gateway_certificate_if_due(state, dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=80))
    assert renewed is not None and renewed[0] == before and serial_hex(renewed[1]) != before
    assert issued_by(renewed[1], CaFiles(state, "access").previous())  # type: ignore[arg-type]
    gateway = (str(state.gateway_cert), str(state.gateway_key))
    alice_new = issue(state, "access", "alice2", tmp_path / "new")
    client_ca = admin.ca_path
    for who in (alice_old, alice_new):
        assert _handshake(gateway, trusted_ca_file(state, "access"), who, client_ca)

    # Finishing is refused while certificates from the old CA are still in use, and says which.
    with pytest.raises(PKIError, match="still depend on the old access CA") as refused:
        rotate(state, config, "access", actor="test", overlap=WEEK, finish=True)
    assert "spiffe://rotate.test/user/alice" in refused.value.message and refused.value.hint
    waiting = full_status(state)["access"]["waiting_for"]
    assert {w["what"].split(":")[0] + ":" + w["what"].split(":")[1] for w in waiting} >= {
        "spiffe://rotate.test/user/alice"
    }

    [done] = rotate(state, config, "access", actor="test", overlap=WEEK, finish=True, force=True)
    assert done.event == "ca.rotate.finish" and "user/alice" in " ".join(done.waiting_for)
    assert not state.access_ca_bundle.exists() and trusted_ca_file(state, "access") == state.access_ca_cert
    files = CaFiles(state, "access")
    assert not files.previous_cert.exists() and not files.previous_key.exists()
    assert issued_by(load_cert(state.gateway_cert), load_cert(state.access_ca_cert)), "the gateway moved over"
    gateway = (str(state.gateway_cert), str(state.gateway_key))
    assert not _handshake(gateway, trusted_ca_file(state, "access"), alice_old, client_ca), "old CA dropped"
    assert _handshake(gateway, trusted_ca_file(state, "access"), alice_new, client_ca)
    admin = load_profile("a")
    assert [fingerprint(c) for c in admin.trusted_cas()] == [new_fp]
    assert issued_by(admin.certificate(), load_cert(state.access_ca_cert)), "the admin's certificate was re-issued"
    assert read_rotation(state).access is None and read_rotation(state).finished[-1]["forced"] is True
    events = [r for r in read_records(state.audit_dir) if r.get("kind") == "ca"]
    assert [r["event"] for r in events] == ["ca.rotate.start", "ca.rotate.finish"]
    assert events[-1]["forced"] is True and events[0]["new_sha256"] == new_fp


def test_a_second_access_rotation_waits_for_the_first_to_finish(state: StateDir) -> None:
    config = state.load_config()
    rotate(state, config, "access", actor="test", overlap=WEEK)
    with pytest.raises(PKIError, match="already under way"):
        rotate(state, config, "access", actor="test", overlap=WEEK)
    with pytest.raises(PKIError, match="at least 2 minutes"):
        rotate(state, config, "internal", actor="test", overlap=dt.timedelta(seconds=30))
    with pytest.raises(PKIError, match="withdraws a published internal CA only"):
        rotate(state, config, "access", actor="test", overlap=WEEK, abort=True)


def test_a_finished_rotation_with_nothing_left_needs_no_force(state: StateDir) -> None:
    config = state.load_config()
    rotate(state, config, "access", actor="test", overlap=WEEK)
    store = IdentityStore.open(state.identity_db)
    for cert in store.certificates_of(f"spiffe://{TD}/user/admin"):
        store.revoke_certificate(str(cert["serial"]), "test")
    [done] = rotate(state, config, "access", actor="test", overlap=WEEK, finish=True)
    assert done.waiting_for == [] and read_rotation(state).finished[-1]["forced"] is False
    with pytest.raises(PKIError, match="no access CA rotation is under way"):
        rotate(state, config, "access", actor="test", overlap=WEEK, finish=True)


def test_half_done_files_are_refused(state: StateDir) -> None:
    config = state.load_config()
    rotate(state, config, "access", actor="test", overlap=WEEK)
    CaFiles(state, "access").previous_cert.unlink()
    with pytest.raises(PKIError, match="do not match"):
        rotate(state, config, "access", actor="test", overlap=WEEK, finish=True, force=True)


# -- internal CA -----------------------------------------------------------------------------------------------


def _node(state: StateDir, name: str) -> None:
    """A node that (re)joined now: its Ray loaded the CA files as they are now."""
    NodeRegistry.open(state.identity_db).add_node(
        name=name,
        spiffe_id=f"spiffe://{TD}/node/{name}",
        address="10.9.0.2",
        serial="ab",
        not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1),
        ports={},
        node_secret=Secret("s"),
        token_id="t",
    )


def _renewed(state: StateDir, name: str, *, restarted: bool = True) -> None:
    """The node renewed its certificate (cluster/node_renewal.py) and, if ``restarted``, reported that its Ray
    restarted with the answer's certificate and CA bundle."""
    registry = NodeRegistry.open(state.identity_db)
    now = dt.datetime.now(dt.timezone.utc)
    registry.record_certificate(name, "cd", now, now + dt.timedelta(days=1))
    if restarted:
        registry.record_outcome(name, ok=True)


def test_internal_rotation_publishes_first_and_signs_only_once_ray_has_restarted(
    state: StateDir, tmp_path: Path
) -> None:
    config = state.load_config()
    old = load_cert(state.internal_ca_cert)
    worker_old = issue(state, "internal", "worker-1", tmp_path / "old")
    _node(state, "worker-1")  # its Ray started before the rotation

    [published] = rotate(state, config, "internal", actor="test", overlap=WEEK)
    assert published.event == "ca.publish" and published.waiting_for and "worker-1" in published.waiting_for[0]
    files = CaFiles(state, "internal")
    assert fingerprint(load_cert(state.internal_ca_cert)) == fingerprint(old), "the old CA still signs"
    bundle = [fingerprint(c) for c in x509.load_pem_x509_certificates(state.internal_ca_bundle.read_bytes())]
    assert bundle == [fingerprint(old), published.new_sha256] and files.next_key.exists()
    assert trusted_ca_file(state, "internal") == state.internal_ca_bundle
    # Again while the node still runs on the old trust: refused, saying what to restart.
    with pytest.raises(PKIError, match="started before the new internal CA was published") as refused:
        rotate(state, config, "internal", actor="test", overlap=WEEK)
    assert "worker-1" in refused.value.message
    with pytest.raises(PKIError, match="only published"):
        rotate(state, config, "internal", actor="test", overlap=WEEK, finish=True)

    _renewed(state, "worker-1", restarted=False)  # a new certificate, but Ray has not restarted yet
    with pytest.raises(PKIError, match="started before the new internal CA was published"):
        rotate(state, config, "internal", actor="test", overlap=WEEK)
    _renewed(state, "worker-1")  # renewed: Ray restarted with the bundle
    [started] = rotate(state, config, "internal", actor="test", overlap=WEEK)
    assert started.event == "ca.rotate.start"
    new = load_cert(state.internal_ca_cert)
    assert fingerprint(new) == published.new_sha256 and not files.next_key.exists()
    assert issued_by(load_cert(state.node_cert), new), "the head's node certificate comes from the new CA"
    worker_new = issue(state, "internal", "worker-2", tmp_path / "new")
    head = (str(state.node_cert), str(state.node_key))
    trust = trusted_ca_file(state, "internal")
    for peer in (worker_old, worker_new):
        assert _handshake(head, trust, peer, trust), "both CAs are trusted during the overlap"

    with pytest.raises(PKIError, match="still depend on the old internal CA"):
        rotate(state, config, "internal", actor="test", overlap=WEEK, finish=True)
    _renewed(state, "worker-1")  # renewed again, now with a certificate from the new CA
    [done] = rotate(state, config, "internal", actor="test", overlap=WEEK, finish=True)
    assert done.event == "ca.rotate.finish" and not state.internal_ca_bundle.exists()
    trust = trusted_ca_file(state, "internal")
    assert trust == state.internal_ca_cert
    assert not _handshake(head, trust, worker_old, trust), "a certificate from the old internal CA is refused"
    assert _handshake(head, trust, worker_new, trust)
    events = [r["event"] for r in read_records(state.audit_dir) if r.get("kind") == "ca"]
    assert events == ["ca.publish", "ca.rotate.start", "ca.rotate.finish"]


def test_a_stopped_cluster_publishes_and_switches_at_once(state: StateDir) -> None:
    steps = rotate(state, state.load_config(), "internal", actor="test", overlap=WEEK)
    assert [s.event for s in steps] == ["ca.publish", "ca.rotate.start"]
    status = full_status(state)["internal"]
    assert status["rotation"]["phase"] == "overlap" and status["previous"] and status["waiting_for"] == []


def test_a_published_internal_ca_can_be_withdrawn(state: StateDir) -> None:
    config = state.load_config()
    _node(state, "worker-1")
    [published] = rotate(state, config, "internal", actor="test", overlap=WEEK)
    [withdrawn] = rotate(state, config, "internal", actor="test", overlap=WEEK, abort=True)
    assert withdrawn.event == "ca.publish.withdraw" and not state.internal_ca_bundle.exists()
    assert not CaFiles(state, "internal").next_key.exists()
    # A later rotation replaces the withdrawn statement: the old CA never has two successors.
    rotate(state, config, "internal", actor="test", overlap=WEEK)
    statements = CaFiles(state, "internal").statements()
    assert len(statements) == 1 and statements[0].new_sha256 != published.new_sha256


def test_the_status_names_everything(state: StateDir) -> None:
    rotate(state, state.load_config(), "access", actor="test", overlap=WEEK)
    status = json.loads(json.dumps(full_status(state)))
    assert status["access"]["rotation"]["phase"] == "overlap" and status["access"]["previous"]["sha256"]
    assert status["internal"]["rotation"] is None and status["internal"]["next"] is None
    assert any("user/admin" in w["what"] for w in status["access"]["waiting_for"])


def test_ca_keys_are_private_and_loaded_under_the_lock(state: StateDir) -> None:
    rotate(state, state.load_config(), "access", actor="test", overlap=WEEK)
    for path in (state.access_ca_key, CaFiles(state, "access").previous_key):
        assert path.stat().st_mode & 0o077 == 0
    assert (state.pki_dir / ".ca.lock").exists()
    assert CertificateAuthority.load("access", TD, state.access_ca_cert, state.access_ca_key).fingerprint == (
        fingerprint(load_cert(state.access_ca_cert))
    )
