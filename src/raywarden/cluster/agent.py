"""The node agent: one small long-running process per worker host, started by `join`, stopped by `down`. It
runs as the control plane's user (root on a worker), never as Ray's: it holds the node secret.

- Once 2/3 of the node certificate's life has passed, it asks the head for a new one over the pinned
  channel, waits its turn (the head lets one node restart at a time), lets Ray drain (no new work; running
  tasks get until the drain deadline), restarts Ray with the new certificate on the same ports, and reports.
- Every SYNC_EVERY_S it brings the firewall's peers in step with the head (nodes that joined, left or were
  revoked).
- When Ray stops by itself (the head restarted, say), it starts it again, backing off while that fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from raywarden.cluster import worker_ray
from raywarden.cluster.certlife import Lifetime, now_utc
from raywarden.cluster.headlink import HeadRefusal, post
from raywarden.cluster.nodestate import NodeConfig, NodeState
from raywarden.cluster.procs import alive
from raywarden.cluster.worker import apply_peers, learn_access_cas
from raywarden.errors import PKIError, RaywardenError
from raywarden.files import read_private, write_private, write_public
from raywarden.pki.certs import load_cert, serial_hex, spiffe_id_of
from raywarden.pki.keys import generate_private_key, private_key_pem

log = logging.getLogger("raywarden.agent")

TICK_S = 2.0
SYNC_EVERY_S = 60.0
FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 300.0
START_ATTEMPTS = 3


class NodeAgent:
    def __init__(self, root: Path) -> None:
        self.node = NodeState(root)
        self.stopping = threading.Event()
        self.state = "starting"
        self.failures = 0
        self.last_error: str | None = None
        self.last_renewal: dict[str, Any] | None = None
        self._next_sync = 0.0
        self._next_renewal = 0.0
        self._next_start = 0.0
        self._start_backoff = FIRST_BACKOFF_S

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        log.info("node agent for %s started (pid %d)", self.node.root, os.getpid())
        self._status("running")
        while not self.stopping.is_set() and self.node.exists():
            try:
                self.tick()
            except RaywardenError as exc:
                self._failed(exc.message)
            except Exception as exc:  # keep the node served; the traceback goes to the agent's log
                log.exception("unexpected error")
                self._failed(f"{type(exc).__name__}: {exc}")
            self.stopping.wait(TICK_S)
        log.info("node agent stopped")

    def tick(self) -> None:
        now = time.monotonic()
        config = self.node.load()
        if now >= self._next_sync:
            self._next_sync = now + SYNC_EVERY_S
            self._sync(config)
        life = Lifetime.of(load_cert(self.node.node_cert))
        if life.due() and now >= self._next_renewal:
            self.renew(config, life)
        elif (config.ray_pid is None or not alive(config.ray_pid)) and now >= self._next_start:
            self._restart_after_exit(config)
        self._status(self.state if self.state != "starting" else "running")

    def _sync(self, config: NodeConfig) -> None:
        try:
            answer = post(config.head_url, "/raywarden/v1/nodes/peers", self._auth(config), self.node.access_ca_cert)
        except RaywardenError as exc:
            log.warning("peer sync failed: %s", exc.message)
            return
        apply_peers(self.node, answer["peers"], answer.get("revoked", []))
        learn_access_cas(self.node, answer)

    def _auth(self, config: NodeConfig) -> dict[str, Any]:
        return {"name": config.name, "node_secret": read_private(self.node.node_secret).decode().strip()}

    # -- renewal ----------------------------------------------------------------------------------------

    def renew(self, config: NodeConfig, life: Lifetime) -> None:
        current = load_cert(self.node.node_cert)
        key = generate_private_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, config.name)]))
            .sign(key, hashes.SHA256())
        )
        request = {
            **self._auth(config),
            "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "serial": serial_hex(current),
        }
        self._status("renewing")
        try:
            answer = post(config.head_url, "/raywarden/v1/nodes/renew", request, self.node.access_ca_cert)
        except HeadRefusal as exc:
            if exc.retry_after_s is None:
                raise
            self._next_renewal = time.monotonic() + exc.retry_after_s
            log.info("renewal postponed %.0fs: %s", exc.retry_after_s, exc.message)
            self._status("waiting for the restart lease")
            return
        # From here the head holds a restart lease for this node: every way out reports, which returns it.
        outcome: dict[str, Any] = {"name": config.name, "serial": answer.get("serial", ""), "ok": False}
        try:
            cert = self._check_answer(answer, key.public_key(), config)
            wait_s = max(0.0, min(config.ray_drain_s, life.left().total_seconds() - worker_ray.STOP_MARGIN_S))
            self._status("draining")
            log.info("certificate %s issued; draining Ray for at most %.0fs", serial_hex(cert), wait_s)
            drain, drain_s = worker_ray.stop(self.node, config.ray_pid, wait_s)
            outcome.update(drain=drain, drain_seconds=drain_s)
            self._install(config, key, answer)
            self._status("restarting")
            started = time.monotonic()
            self._start(self.node.load())
            outcome.update(ok=True, restart_seconds=round(time.monotonic() - started, 2))
            log.info("Ray restarted with certificate %s (drain %s, %.1fs)", serial_hex(cert), drain, drain_s)
        except RaywardenError as exc:
            outcome["error"] = exc.message
            raise
        finally:
            self._report(config, outcome)

    def _check_answer(
        self, answer: dict[str, Any], public_key: ec.EllipticCurvePublicKey, config: NodeConfig
    ) -> x509.Certificate:
        """The new certificate is for this key, this node and this address, valid now, from a CA of the bundle."""
        try:
            cert = x509.load_pem_x509_certificate(answer["node_cert_pem"].encode())
            cas = x509.load_pem_x509_certificates(answer["internal_ca_pem"].encode())
        except (KeyError, ValueError, AttributeError):
            raise PKIError("the head's renewal answer holds no certificate") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if cert.public_key().public_bytes(der, spki) != public_key.public_bytes(der, spki):
            raise PKIError("the renewed certificate is not for this node's new key")
        if str(spiffe_id_of(cert)) != config.spiffe_id:
            raise PKIError(f"the renewed certificate names {spiffe_id_of(cert)}, not {config.spiffe_id}")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if config.address not in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}:
            raise PKIError(f"the renewed certificate does not name this node's address {config.address}")
        if not cert.not_valid_before_utc <= now_utc() < cert.not_valid_after_utc:
            raise PKIError("the renewed certificate is not valid now (check this host's clock)")
        for ca in cas:
            try:
                cert.verify_directly_issued_by(ca)
                return cert
            except (ValueError, TypeError, InvalidSignature):
                continue
        raise PKIError("the renewed certificate is not issued by a CA of the internal CA bundle")

    def _install(self, config: NodeConfig, key: ec.EllipticCurvePrivateKey, answer: dict[str, Any]) -> None:
        """Ray is stopped: the new key, certificate and CA bundle replace the old ones (Ray gets copies at start)."""
        write_private(self.node.node_key, private_key_pem(key))
        write_public(self.node.node_cert, answer["node_cert_pem"].encode())
        write_public(self.node.internal_ca_cert, answer["internal_ca_pem"].encode())
        self.node.update(ray_pid=None, drain_timeout_s=float(answer.get("drain_timeout_s", config.drain_timeout_s)))
        if "peers" in answer:
            apply_peers(self.node, answer["peers"], answer.get("revoked", []))
        learn_access_cas(self.node, answer)

    def _report(self, config: NodeConfig, outcome: dict[str, Any]) -> None:
        self.last_renewal = {**outcome, "at": now_utc().isoformat()}
        if outcome["ok"]:
            self.failures, self.last_error = 0, None
        try:
            post(
                config.head_url,
                "/raywarden/v1/nodes/restarted",
                {**self._auth(config), **outcome},
                self.node.access_ca_cert,
            )
        except RaywardenError as exc:
            log.error("could not report the restart to the head (its lease expires by itself): %s", exc.message)
        self._status("running")

    # -- Ray --------------------------------------------------------------------------------------------

    def _start(self, config: NodeConfig) -> int:
        """Start Ray, trying again a few times: a start can fail on a busy host (a Ray agent slow to bind)."""
        for attempt in range(1, START_ATTEMPTS):
            try:
                return worker_ray.start(self.node, config)
            except RaywardenError as exc:
                log.warning("Ray start %d/%d failed: %s", attempt, START_ATTEMPTS, exc.message)
                worker_ray.stop(self.node, self.node.load().ray_pid, 0.0)
                self.stopping.wait(FIRST_BACKOFF_S)
                config = self.node.load()
        return worker_ray.start(self.node, config)

    def _restart_after_exit(self, config: NodeConfig) -> None:
        log.warning("Ray is not running (pid %s); starting it", config.ray_pid)
        self._status("restarting")
        worker_ray.stop(self.node, config.ray_pid, 0.0)
        try:
            worker_ray.start(self.node, config)
        except RaywardenError:
            self._next_start = time.monotonic() + self._start_backoff
            self._start_backoff = min(MAX_BACKOFF_S, self._start_backoff * 2)
            raise
        self._start_backoff = FIRST_BACKOFF_S

    # -- status -----------------------------------------------------------------------------------------

    def _failed(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** min(self.failures - 1, 10))
        self._next_renewal = max(self._next_renewal, time.monotonic() + backoff)
        log.error("%s (failure %d in a row; next renewal attempt in %.0fs)", message, self.failures, backoff)
        self._status("running")

    def _status(self, state: str) -> None:
        self.state = state
        data: dict[str, Any] = {
            "pid": os.getpid(),
            "state": state,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_renewal": self.last_renewal,
            "updated_at": now_utc().isoformat(),
        }
        try:
            cert = load_cert(self.node.node_cert)
            life = Lifetime.of(cert)
            data["certificate"] = {
                "serial": serial_hex(cert),
                "not_after": life.not_after.isoformat(),
                "renew_at": life.renew_at().isoformat(),
            }
        except RaywardenError:
            pass
        try:
            write_private(self.node.agent_status, (json.dumps(data, indent=2) + "\n").encode())
        except OSError as exc:
            log.error("cannot write %s: %s", self.node.agent_status, exc)


def agent_status(node: NodeState) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(node.agent_status.read_text())
    except (OSError, ValueError):
        return None
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raywarden.cluster.agent", description="Run a worker's node agent.")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.umask(0o077)
    NodeAgent(args.state_dir.absolute()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
