"""A worker node: `join` (enroll over the pinned gateway, firewall, start Ray), `sync` and `down`.

The join token, the Ray token and the node secret only ever cross a TLS connection verified against the
access CA whose SHA-256 fingerprint the operator passed on the command line; nothing is sent before that
fingerprint matched.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import shutil
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict

from raywarden.cluster import firewall, multinode, raydir
from raywarden.cluster.ports import WorkerPorts
from raywarden.cluster.procs import alive, exit_status, is_loopback, listening_ports, spawn_as
from raywarden.cluster.ray_head import cluster_pids, node_environment, ray_binary, stop_head
from raywarden.cluster.raydir import RayFiles
from raywarden.cluster.rayuser import DEFAULT_RAY_USER, check_interpreter, ensure_ray_user
from raywarden.errors import ClusterError, ConfigError, PKIError
from raywarden.files import ensure_private_dir, read_private, write_private, write_public
from raywarden.pki.certs import fingerprint
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import check_name
from raywarden.secret import Secret
from raywarden.state import StateDir, runtime_dir_for


class NodeConfig(BaseModel):
    """What `join` learnt, kept in the worker's state dir for `down` and `node sync`."""

    model_config = ConfigDict(extra="forbid")
    head_url: str
    name: str
    spiffe_id: str
    address: str
    trust_domain: str
    gcs_address: str
    head_ip: str
    peers: list[str]
    ports: WorkerPorts
    access_ca_fingerprint: str
    joined_at: str
    ray_pid: int | None = None
    firewall: str = ""
    # The OS user this node's Ray runs as (`join` runs as root, so always one of its own).
    ray_user: str | None = None


@dataclass(frozen=True)
class NodeState:
    """Paths inside a worker's state dir (the same default location as a head's: a host is one or the other)."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "node.json"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def node_key(self) -> Path:
        return self.pki_dir / "node.key"

    @property
    def node_cert(self) -> Path:
        return self.pki_dir / "node.crt"

    @property
    def internal_ca_cert(self) -> Path:
        return self.pki_dir / "internal-ca.crt"

    @property
    def access_ca_cert(self) -> Path:
        return self.pki_dir / "access-ca.crt"

    @property
    def ray_token(self) -> Path:
        return self.root / "keys" / "ray-token"

    @property
    def node_secret(self) -> Path:
        return self.root / "keys" / "node-secret"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def ray_dir(self) -> Path:
        """Ray's own folder (raydir.py); `join` needs root, so a worker's Ray always has a user of its own."""
        return runtime_dir_for(self.root, separated=True) / "ray"

    @property
    def ray_temp_dir(self) -> Path:
        return self.ray_dir / "tmp"

    @property
    def table(self) -> str:
        return firewall.table_name(self.root)

    def exists(self) -> bool:
        return self.config_path.is_file()

    def load(self) -> NodeConfig:
        try:
            return NodeConfig.model_validate_json(self.config_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{self.root} holds no joined worker node", hint="run `raywarden join` first") from None

    def save(self, config: NodeConfig) -> None:
        write_private(self.config_path, config.model_dump_json(indent=2).encode())


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
    ray = ray_binary()
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
    answer = _post(head_url, "/raywarden/v1/nodes/join", payload, node.access_ca_cert)
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
    )
    node.save(config)
    try:
        owners = firewall.owner_uids(user.uid)
        firewall.install(firewall.FirewallPlan.for_ports(node.table, ports, peers=config.peers, owners=owners))
        files = raydir.prepare(
            node.ray_dir, user, cert=node.node_cert, key=node.node_key, ca=node.internal_ca_cert, token=node.ray_token
        )
        pid = _start_worker(files, config, ray, num_cpus)
        config.ray_pid = pid
        node.save(config)
        _wait_for_worker(files, config, pid, timeout_s)
        raydir.tighten(files)
        exposed = {p: a for p, a in listening_ports(set(cluster_pids(node, pid))).items() if not is_loopback(a)}
        config.firewall = multinode.cover_unplanned(node.table, ports, exposed)
        node.save(config)
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
        "firewall": config.firewall,
        "state_dir": str(root),
        "enroll_seconds": round(enrolled - started, 3),
        "seconds": round(time.monotonic() - started, 3),
    }


def _post(head_url: str, path: str, payload: dict[str, Any], ca: Path) -> dict[str, Any]:
    try:
        resp = requests.post(head_url.rstrip("/") + path, json=payload, verify=str(ca), timeout=60)
    except requests.exceptions.SSLError as exc:
        raise PKIError(
            f"TLS with the head failed: {exc}",
            hint="the URL's host must be one the gateway certificate names (the head's --node-ip)",
        ) from None
    except requests.RequestException as exc:
        raise ClusterError(f"cannot reach the head at {head_url}: {type(exc).__name__}") from None
    try:
        body: dict[str, Any] = resp.json()
    except ValueError:
        body = {"error": resp.text[:300]}
    if resp.status_code != 200:
        raise ClusterError(
            f"the head refused ({resp.status_code}): {body.get('error', '')} (request {body.get('request_id', '?')})",
            hint=body.get("hint"),
        )
    return body


def worker_command(files: RayFiles, config: NodeConfig, ray: str, num_cpus: int | None) -> list[str]:
    p = config.ports
    command = [
        ray,
        "start",
        "--block",
        f"--address={config.gcs_address}",
        f"--node-ip-address={config.address}",
        f"--temp-dir={files.temp_dir}",
        f"--node-manager-port={p.node_manager}",
        f"--object-manager-port={p.object_manager}",
        f"--dashboard-agent-listen-port={p.dashboard_agent_http}",
        f"--dashboard-agent-grpc-port={p.dashboard_agent_grpc}",
        f"--metrics-export-port={p.metrics_export}",
        f"--runtime-env-agent-port={p.runtime_env_agent}",
        f"--min-worker-port={p.min_worker}",
        f"--max-worker-port={p.max_worker}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    return command


def _start_worker(files: RayFiles, config: NodeConfig, ray: str, num_cpus: int | None) -> int:
    same = files.user.is_current
    return spawn_as(
        worker_command(files, config, ray, num_cpus),
        env=node_environment(files, loopback=False),
        log_path=files.start_log,
        cwd=files.temp_dir,
        uid=None if same else files.user.uid,
        gid=None if same else files.user.gid,
    )


def _wait_for_worker(files: RayFiles, config: NodeConfig, pid: int, timeout_s: float) -> None:
    """`ray start --block` prints "Ray runtime started" once the raylet registered with the head's GCS."""
    log_path = files.start_log
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = exit_status(pid)
        if code is not None:
            raise ClusterError(
                f"Ray exited during start-up (exit code {code})",
                hint=f"see {log_path} and the logs under {files.temp_dir}",
            )
        if "Ray runtime started" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise ClusterError(
        f"the Ray worker did not register with {config.gcs_address} within {timeout_s:.0f}s", hint=f"see {log_path}"
    )


def sync(root: Path) -> dict[str, Any]:
    """Ask the head for the cluster's current nodes and make this worker's allow set match."""
    node = NodeState(root)
    config = node.load()
    secret = read_private(node.node_secret).decode().strip()
    answer = _post(
        config.head_url, "/raywarden/v1/nodes/peers", {"name": config.name, "node_secret": secret}, node.access_ca_cert
    )
    wanted = set(answer["peers"])
    for gone in set(config.peers) - wanted:
        firewall.remove_peer(node.table, gone)
    for new in wanted - set(config.peers):
        firewall.add_peer(node.table, new)
    for revoked in answer.get("revoked", []):
        firewall.remove_peer(node.table, revoked)
    config.peers = sorted(wanted)
    node.save(config)
    return {"name": config.name, "peers": config.peers}


def down(root: Path, *, reason: str = "down") -> dict[str, Any]:
    """Leave the cluster: tell the head (which audits it and closes its firewall to us), stop Ray, remove our
    rules, and delete the secrets that belonged to the membership."""
    node = NodeState(root)
    config = node.load()
    head_acknowledged = False
    was_running = config.ray_pid is not None and alive(config.ray_pid)
    if node.node_secret.exists():
        try:
            secret = read_private(node.node_secret).decode().strip()
            _post(
                config.head_url,
                "/raywarden/v1/nodes/leave",
                {"name": config.name, "node_secret": secret},
                node.access_ca_cert,
            )
            head_acknowledged = True
        except (ClusterError, PKIError, ConfigError):
            head_acknowledged = False
    left = stop_head(node, config.ray_pid)
    firewall.remove_table(node.table)
    if left:
        raise ClusterError(f"processes of this worker are still running: {left}", hint="kill them by hand")
    for secret_file in (node.ray_token, node.node_secret, node.node_key):
        secret_file.unlink(missing_ok=True)
    node.config_path.unlink(missing_ok=True)
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
