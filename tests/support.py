"""Helpers for tests: start/stop a real cluster, run the CLI, issue test certificates, raw HTTPS calls."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from raywarden.cluster import lifecycle, runstate
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.identity.store import IdentityStore
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, serial_hex
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import StateDir

TD = "test.raywarden"


@dataclass(frozen=True)
class Cluster:
    root: Path
    state: StateDir
    home: Path
    profile: str
    url: str

    @property
    def profile_dir(self) -> Path:
        return self.home / "profiles" / self.profile

    @property
    def admin_cert(self) -> tuple[str, str]:
        return (str(self.profile_dir / "client.crt"), str(self.profile_dir / "client.key"))

    @property
    def ca(self) -> str:
        return str(self.state.access_ca_cert)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
        env["RAYWARDEN_HOME"] = str(self.home)
        env["RAYWARDEN_STATE_DIR"] = str(self.state.root)
        return env

    def ray_token(self) -> str:
        return self.state.ray_token.read_text().strip()

    def dashboard_url(self) -> str:
        run = runstate.read_run_state(self.state)
        assert run is not None
        return f"http://127.0.0.1:{run.ports.dashboard}"

    def ray_jobs(self) -> list[dict[str, Any]]:
        """Ask Ray directly (bypassing the gateway) which jobs exist."""
        resp = requests.get(
            f"{self.dashboard_url()}/api/jobs/", headers={"Authorization": f"Bearer {self.ray_token()}"}, timeout=10
        )
        resp.raise_for_status()
        jobs: list[dict[str, Any]] = resp.json()
        return jobs

    def audit_records(self, settle_s: float = 3.0) -> list[dict[str, Any]]:
        """The log, once the outcome records of requests decided in the last seconds are in: the gateway writes
        them after the answer (group commit), so a test that just got its answer may read a moment early."""
        deadline = time.monotonic() + settle_s
        while True:
            records = []
            for path in sorted(self.state.audit_dir.glob("audit-*.jsonl")):
                for line in path.read_text().splitlines():
                    if line.strip():
                        records.append(json.loads(line))
            recent = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%S")
            done = {r.get("request_id") for r in records if r.get("kind") == "outcome"}
            waiting = [
                r for r in records if r.get("kind") == "request" and r["request_id"] not in done and r["time"] >= recent
            ]
            if not waiting or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def issue(
        self,
        name: str,
        *,
        kind: str = "user",
        groups: tuple[str, ...] = (),
        lifetime: dt.timedelta | None = None,
        register: bool = True,
        ca: str = "access",
    ) -> tuple[str, str]:
        """A client certificate written to files under root/certs; optionally registered as a principal."""
        config = self.state.load_config()
        if ca == "access":
            authority = CertificateAuthority.load("access", TD, self.state.access_ca_cert, self.state.access_ca_key)
        else:
            authority = CertificateAuthority.load(
                "internal", TD, self.state.internal_ca_cert, self.state.internal_ca_key
            )
        spiffe = SpiffeId(config.trust_domain, kind, name)  # type: ignore[arg-type]
        key = generate_private_key()
        cert = authority.issue(key.public_key(), spiffe, lifetime=lifetime or dt.timedelta(hours=1))
        store = IdentityStore.open(self.state.identity_db)
        if register and kind in ("user", "sa") and store.get(str(spiffe)) is None:
            store.add_principal(spiffe, list(groups), created_by="test")
        if register:
            store.record_certificate(serial_hex(cert), str(spiffe), cert.not_valid_after_utc)
        folder = self.root / "certs"
        folder.mkdir(exist_ok=True)
        stem = f"{kind}-{name}-{serial_hex(cert)[:8]}"
        (folder / f"{stem}.crt").write_bytes(cert_pem(cert))
        (folder / f"{stem}.key").write_bytes(private_key_pem(key))
        os.chmod(folder / f"{stem}.key", 0o600)
        return (str(folder / f"{stem}.crt"), str(folder / f"{stem}.key"))


def start_cluster(
    root: Path, *, port: int, profile: str = "test", serve_port: int | None = None, **settings: Any
) -> Cluster:
    home = root / "home"
    state = StateDir(root / "state")
    env_before = os.environ.get("RAYWARDEN_HOME")
    os.environ["RAYWARDEN_HOME"] = str(home)
    try:
        init_state(
            state,
            ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=port), **settings),
            admin_name="admin",
            profile_name=profile,
        )
        serve_listen = Listen(host="127.0.0.1", port=serve_port) if serve_port is not None else None
        lifecycle.up(state, num_cpus=2, serve_listen=serve_listen)
    finally:
        if env_before is None:
            os.environ.pop("RAYWARDEN_HOME", None)
        else:
            os.environ["RAYWARDEN_HOME"] = env_before
    return Cluster(root, state, home, profile, f"https://127.0.0.1:{port}")


def stop_cluster(root: Path) -> None:
    state = StateDir(root / "state")
    if state.exists():
        lifecycle.down(state)
        # `down` keeps Ray's sessions and Prometheus's data (/var/lib/raywarden/ID as root); a test's go with it.
        shutil.rmtree(state.runtime_dir, ignore_errors=True)


def run_cli(
    cluster: Cluster, *args: str, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"raywarden {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def tls_context(cluster: Cluster, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cluster.ca)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def raw_https(
    cluster: Cluster,
    method: str,
    target: str | bytes,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    cert: tuple[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly this target (no client-side normalisation of '#', escapes or duplicates),
    over real TLS, optionally from another loopback source address."""
    import http.client

    host, port = cluster.url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(
        host, int(port), context=tls_context(cluster, cert), timeout=60, source_address=(source, 0)
    )
    try:
        conn.putrequest(
            method, target if isinstance(target, str) else target.decode("latin-1"), skip_accept_encoding=True
        )
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def refusal_status(resp: requests.Response) -> int:
    """The status a refusal stands for. `requests` sends the User-Agent of Ray's job client, to which the gateway
    sends a policy's 403 on Ray's API as 400 with the true status in the body (gateway/refusals.py)."""
    if resp.status_code == 400 and resp.headers.get("content-type", "").startswith("application/json"):
        status = resp.json().get("status")
        if isinstance(status, int):
            return status
    return resp.status_code
