"""Identity figures: bearer token verification cost per request, and enrollment + login wall time.

    python bench/identity_bench.py [--verifications 10000] [--logins 5]

Token verification is measured in-process through the gateway's Authenticator (signature, claims and the
identity-store lookups that make revocation immediate). Enrollment (`user add`: principal + one-time code)
and login (pinned CA fetch, local key, CSR, enroll over TLS, profile written) run against a real gateway
process; Ray is not needed for either.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.gateway.authn import Authenticator
from raywarden.gateway.tokens import TokenAuthority
from raywarden.identity.admin import IdentityAdmin
from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import fingerprint, load_cert
from raywarden.state import StateDir


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_verify(state: StateDir, n: int) -> None:
    admin = IdentityAdmin(state, actor="bench")
    admin.add("sa", "bench-bot", ["developers"])
    token = admin.sa_token("bench-bot", 3600).token.reveal()
    auth = Authenticator.from_state(state, state.load_config(), IdentityStore.open(state.identity_db))
    header = f"Bearer {token}"
    authority = TokenAuthority.for_state(state, state.load_config())
    import jwt

    jwt_header = jwt.get_unverified_header(token)
    # One event loop, as in the gateway; the coroutine never suspends for a cluster token.
    loop = asyncio.new_event_loop()
    for _ in range(200):  # warm-up
        loop.run_until_complete(auth.authenticate(None, header))
    full, crypto = [], []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        loop.run_until_complete(auth.authenticate(None, header))
        t1 = time.perf_counter_ns()
        authority.verify(token, jwt_header)
        t2 = time.perf_counter_ns()
        full.append((t1 - t0) / 1000)
        crypto.append((t2 - t1) / 1000)
    loop.close()
    print(
        f"token verify, full (JWT + revocation/disable lookups), {n} ops: "
        f"p50 {_pct(full, 0.5):.0f} us/op, p99 {_pct(full, 0.99):.0f} us/op"
    )
    print(
        f"token verify, signature + claims only, {n} ops:                "
        f"p50 {_pct(crypto, 0.5):.0f} us/op, p99 {_pct(crypto, 0.99):.0f} us/op"
    )


def bench_login(state: StateDir, root: Path, runs: int) -> None:
    from raywarden.client.enroll import login

    config = state.load_config()
    url = f"https://127.0.0.1:{config.listen.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raywarden.gateway",
            "--state-dir",
            str(state.root),
            "--dashboard-url",
            "http://127.0.0.1:9",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/raywarden/v1/ca", verify=str(state.access_ca_cert), timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("gateway did not start")
            time.sleep(0.1)
        fp = fingerprint(load_cert(state.access_ca_cert))
        admin = IdentityAdmin(state, actor="bench")
        enroll_ms, login_ms = [], []
        for i in range(runs):
            t0 = time.perf_counter()
            new = admin.add("user", f"bench-user-{i}", ["developers"])
            t1 = time.perf_counter()
            os.environ["RAYWARDEN_HOME"] = str(root / f"machine-{i}")
            login(url, new.code.reveal(), fp, profile_name="bench")
            t2 = time.perf_counter()
            enroll_ms.append((t1 - t0) * 1000)
            login_ms.append((t2 - t1) * 1000)
        total = [a + b for a, b in zip(enroll_ms, login_ms, strict=True)]
        print(f"enrollment (user add + one-time code), median of {runs}: {statistics.median(enroll_ms):.1f} ms")
        print(f"login (pin CA, key, CSR, enroll, profile), median of {runs}: {statistics.median(login_ms):.1f} ms")
        print(f"enrollment + login wall time, median of {runs}:          {statistics.median(total):.1f} ms")
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verifications", type=int, default=10_000)
    parser.add_argument("--logins", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rw-idbench-") as tmp:
        root = Path(tmp)
        os.environ["RAYWARDEN_HOME"] = str(root / "admin-home")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        state = StateDir(root / "state")
        init_state(
            state,
            ClusterConfig(trust_domain="bench.raywarden", listen=Listen(host="127.0.0.1", port=port)),
            admin_name="admin",
            profile_name="bench-admin",
        )
        bench_verify(state, args.verifications)
        bench_login(state, root, args.logins)


if __name__ == "__main__":
    main()
