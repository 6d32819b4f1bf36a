"""A worker node: `join` (enroll over the pinned gateway, firewall, start Ray and the node agent), `sync` and
`down`.

The join token, the Ray token and the node secret only ever cross a TLS connection verified against the
access CA whose SHA-256 fingerprint the operator passed on the command line; nothing is sent before that
fingerprint matched.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import os
import re
import shutil
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from raywarden.cluster import firewall, raydir, worker_ray
from raywarden.cluster.headlink import post
from raywarden.cluster.nodestate import NodeConfig, NodeState
from raywarden.cluster.ports import WorkerPorts
from raywarden.cluster.procs import alive, exit_status, pids_mentioning, spawn_detached, terminate
from raywarden.cluster.ray_head import ray_binary
from raywarden.cluster.rayuser import DEFAULT_RAY_USER, check_interpreter, ensure_ray_user
from raywarden.errors import ClusterError, ConfigError, PKIError
from raywarden.files import ensure_private_dir, read_private, write_private, write_public
from raywarden.pki.certs import fingerprint
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import check_name
from raywarden.secret import Secret
from raywarden.state import StateDir

log = logging.getLogger("raywarden.cluster")
__all__ = ["NodeConfig", "NodeState", "down", "join", "start_agent", "stop_agent", "sync"]
AGENT_START_TIMEOUT_S = 15.0
# `down` lets Ray drain this long: running tasks end or are retried on other nodes before the rest is stopped.
DOWN_DRAIN_S = 20.0


def normalise_fingerprint(text: str) -> str:
    value = text.strip().lower()
    value = value.removeprefix("sha256:").replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ConfigError(
            "--ca-fingerprint must be a SHA-256 fingerprint (64 hex digits, colons allowed)",
            hint="`raywarden status` on the head prints it as 'access CA SHA-256'",
        )
    return value


def fetch_pinned_ca(head_url: str, expected: str, dest: Path) -> str:
    """Fetch the access CA from the head without trusting the connection, then pin it by fingerprint.

    Raises before anything secret is sent when the fingerprint differs. Returns the fingerprint."""
    parts = urlsplit(head_url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{head_url!r} is not an https:// URL", hint="e.g. https://10.0.0.5:8443")
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Deliberately unverified: this connection only fetches a public certificate, which is checked below.
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=unverified, timeout=15)
    try:
        conn.request("GET", "/raywarden/v1/ca")
        resp = conn.getresponse()
        body = resp.read(65536)
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the head at {head_url}: {exc}", hint="check the URL and the network"
        ) from None
    finally:
        conn.close()
    try:
        pem = json.loads(body)["access_ca_pem"]
        cert = x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, KeyError, TypeError):
        raise PKIError(
            f"{head_url} did not answer with a CA certificate (HTTP {resp.status})", hint="is this a raywarden gateway?"
        ) from None
    got = fingerprint(cert)
    if not Secret(expected).matches(got):
        raise PKIError(
            f"the head's access CA fingerprint is {got}, not the expected {expected}",
            hint="someone may be intercepting the connection; nothing was sent. Check the fingerprint "
            "with `raywarden status` on the head",
        )
    ensure_private_dir(dest.parent)
    write_public(dest, pem.encode())
    return got


def local_address_towards(host: str, port: int) -> str:
    """The address this host uses to reach the head (no packet is sent: a UDP connect only routes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, port))
        except OSError as exc:
            raise ClusterError(f"no route to {host}: {exc.strerror}", hint="pass --address ADDR") from None
        return str(sock.getsockname()[0])


def default_name() -> str:
    name = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().lower()).strip("-.")[:63]
    return name or "worker"


def join(
    head_url: str,
    token: Secret,
    ca_fingerprint: str,
    *,
    root: Path,
    name: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    ray_user: str | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Enroll this host with the head at ``head_url`` and start its Ray worker. Returns a summary."""
    started = time.monotonic()
    node = NodeState(root)
    expected = normalise_fingerprint(ca_fingerprint)
    name = check_name(name or default_name(), "node name")
    # Preflight before the token is spent: everything that can fail locally fails here.
    firewall.require_available("joining a cluster")
    ray_binary()
    if node.exists() or StateDir(root).exists():
        raise ConfigError(
            f"{root} already holds a raywarden node or cluster",
            hint="`raywarden down --state-dir DIR` first, or pass another --state-dir",
        )
    user = ensure_ray_user(ray_user or DEFAULT_RAY_USER)
    check_interpreter(user)
    for folder in (root, node.pki_dir, node.ray_token.parent, node.logs_dir):
        ensure_private_dir(folder)

    fetch_pinned_ca(head_url, expected, node.access_ca_cert)
    parts = urlsplit(head_url)
    host = parts.hostname or ""
    address = address or local_address_towards(host, parts.port or 443)
    claimed = firewall.claimed_ports(node.table)
    ports = WorkerPorts.allocate("0.0.0.0", avoid=claimed)  # noqa: S104 - probing for free ports, Ray binds * here
    key = generate_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    payload = {
        "token": token.reveal(),
        "name": name,
        "address": address,
        "ports": ports.model_dump(),
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "num_cpus": num_cpus,
    }
    answer = post(head_url, "/raywarden/v1/nodes/join", payload, node.access_ca_cert)
    enrolled = time.monotonic()

    write_private(node.node_key, private_key_pem(key))
    write_public(node.node_cert, answer["node_cert_pem"].encode())
    write_public(node.internal_ca_cert, answer["internal_ca_pem"].encode())
    write_private(node.ray_token, answer["ray_token"].encode() + b"\n")
    write_private(node.node_secret, answer["node_secret"].encode() + b"\n")
    config = NodeConfig(
        head_url=head_url,
        name=name,
        spiffe_id=answer["spiffe_id"],
        address=address,
        trust_domain=answer["trust_domain"],
        gcs_address=answer["gcs_address"],
        head_ip=answer["head"]["node_ip"],
        peers=answer["peers"],
        ports=ports,
        access_ca_fingerprint=expected,
        joined_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        ray_user=user.name,
        num_cpus=num_cpus,
        drain_timeout_s=float(answer.get("drain_timeout_s", 600.0)),
    )
    node.save(config)
    try:
        owners = firewall.owner_uids(user.uid)
        firewall.install(firewall.FirewallPlan.for_ports(node.table, ports, peers=config.peers, owners=owners))
        worker_ray.start(node, config, timeout_s=timeout_s)
        config = node.update(agent_pid=start_agent(node))
    except BaseException:
        down(root, reason="join failed")
        raise
    return {
        "name": name,
        "spiffe_id": config.spiffe_id,
        "address": address,
        "gcs_address": config.gcs_address,
        "peers": config.peers,
        "ray_pid": config.ray_pid,
        "ray_user": user.name,
        "ray_uid": user.uid,
        "agent_pid": config.agent_pid,
        "firewall": config.firewall,
        "state_dir": str(root),
        "enroll_seconds": round(enrolled - started, 3),
        "seconds": round(time.monotonic() - started, 3),
    }


def sync(root: Path) -> dict[str, Any]:
    """Ask the head for the cluster's current nodes and make this worker's allow set match."""
    node = NodeState(root)
    config = node.load()
    secret = read_private(node.node_secret).decode().strip()
    answer = post(
        config.head_url, "/raywarden/v1/nodes/peers", {"name": config.name, "node_secret": secret}, node.access_ca_cert
    )
    learn_access_cas(node, answer)
    return apply_peers(node, answer["peers"], answer.get("revoked", []))


def learn_access_cas(node: NodeState, answer: dict[str, Any]) -> None:
    """The access CAs the head trusts now (during a CA rotation, old and new), from an answer that came over a
    channel the node's current ones verified: from then on the node trusts those for the head."""
    pem = answer.get("access_ca_pem")
    if not isinstance(pem, str):
        return
    try:
        cas = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        log.warning("the head sent an unreadable access CA bundle; keeping %s", node.access_ca_cert)
        return
    if not cas or not all(_is_ca(ca) for ca in cas):
        log.warning("the head's access CA bundle holds a certificate that is not a CA; keeping the current one")
        return
    new = b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in cas)
    if new != node.access_ca_cert.read_bytes():
        write_public(node.access_ca_cert, new)
        log.info("access CAs trusted for the head now: %s", ", ".join(fingerprint(ca)[:16] for ca in cas))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def apply_peers(node: NodeState, peers: list[str], revoked: list[str]) -> dict[str, Any]:
    """Make this worker's allow set the head's current list of nodes."""
    config = node.load()
    wanted = set(peers)
    for gone in set(config.peers) - wanted:
        firewall.remove_peer(node.table, gone)
    for new in wanted - set(config.peers):
        firewall.add_peer(node.table, new)
    for address in revoked:
        firewall.remove_peer(node.table, address)
    config = node.update(peers=sorted(wanted))
    return {"name": config.name, "peers": config.peers}


def down(root: Path, *, reason: str = "down") -> dict[str, Any]:
    """Leave the cluster: stop the node agent, stop Ray (a drain of at most DOWN_DRAIN_S lets running tasks
    end or move), tell the head (which audits it and closes its firewall to us), remove our rules, and delete
    the secrets that belonged to the membership."""
    node = NodeState(root)
    node.load()
    stop_agent(node)
    config = node.load()  # the agent may have restarted Ray meanwhile
    was_running = config.ray_pid is not None and alive(config.ray_pid)
    worker_ray.stop(node, config.ray_pid, DOWN_DRAIN_S)
    head_acknowledged = False
    if node.node_secret.exists():
        try:
            secret = read_private(node.node_secret).decode().strip()
            post(
                config.head_url,
                "/raywarden/v1/nodes/leave",
                {"name": config.name, "node_secret": secret},
                node.access_ca_cert,
            )
            head_acknowledged = True
        except (ClusterError, PKIError, ConfigError):
            head_acknowledged = False
    left = worker_ray.leftovers(node, config.ray_pid)
    firewall.remove_table(node.table)
    if left:
        raise ClusterError(f"processes of this worker are still running: {left}", hint="kill them by hand")
    for secret_file in (node.ray_token, node.node_secret, node.node_key):
        secret_file.unlink(missing_ok=True)
    node.config_path.unlink(missing_ok=True)
    node.agent_status.unlink(missing_ok=True)
    raydir.forget_secrets(node.ray_dir)
    # rmtree removes symlinks without following them: whatever a job left in Ray's folder goes with it.
    shutil.rmtree(node.ray_temp_dir, ignore_errors=True)
    return {
        "name": config.name,
        "left": True,
        "head_acknowledged": head_acknowledged,
        "reason": reason,
        "was_running": was_running,
    }


def _agent_marker(node: NodeState) -> str:
    return f"raywarden.cluster.agent --state-dir {node.root} "


def start_agent(node: NodeState) -> int:
    """Start the node agent (cluster/agent.py) as the control plane's user, detached; wait until it runs."""
    argv = [sys.executable, "-m", "raywarden.cluster.agent", "--state-dir", str(node.root)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
    node.agent_status.unlink(missing_ok=True)
    pid = spawn_detached(argv, env=env, log_path=node.logs_dir / "agent.log")
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if exit_status(pid) is not None:
            raise ClusterError("the node agent exited at start", hint=f"see {node.logs_dir / 'agent.log'}")
        if node.agent_status.exists():
            return pid
        time.sleep(0.1)
    terminate([pid], grace_s=5)
    raise ClusterError(
        f"the node agent did not start within {AGENT_START_TIMEOUT_S:.0f}s", hint=f"see {node.logs_dir / 'agent.log'}"
    )


def stop_agent(node: NodeState) -> None:
    """Stop this node's agent (the one node.json names, and any other for this state dir)."""
    config = node.load()
    found = set(pids_mentioning(_agent_marker(node)))
    if config.agent_pid is not None and alive(config.agent_pid):
        found.add(config.agent_pid)
    if found:
        terminate(sorted(found), grace_s=15.0)
