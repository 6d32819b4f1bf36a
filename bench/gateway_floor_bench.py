"""What the gateway's HTTP stack costs per request, and what its own work costs, in one run:

- "stack": the gateway's listener as `raywarden up` builds it (uvicorn, its protocol class, TLS with the
  access CA, the client's certificate) in front of an app that answers at once;
- "stack+hop": the same, the app making one request to the upstream with the gateway's own upstream client
  (gateway/upstream.py) and relaying the answer;
- "gateway": this build's gateway (one worker) in front of the same upstream, with the admin's certificate:
  authentication, Cedar, both audit records, metrics, the lot.

    python bench/gateway_floor_bench.py [--rounds 3] [--requests 4000] [--clients 16]

The upstream stands in for Ray's dashboard: it answers every request at once with a fixed JSON answer of the
size of Ray's /api/version, in a process whose CPU is not counted. Printed: CPU time per request of each
server's processes (read from /proc, whatever else the machine does), and "gateway minus stack+hop", the CPU the
gateway's own work takes per request. Targets are measured in rotating order, round after round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from gateway_bench import TD, children, client_ssl, cpu_seconds, free_port

from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.state import StateDir

ANSWER_BODY = json.dumps({"version": "4", "ray_version": "2.x", "ray_commit": "f" * 40, "session_name": "s" * 40})
PATH = "/api/version"


def upstream(sock: socket.socket) -> None:
    """Answers every request on ``sock`` with ANSWER_BODY, keeping connections alive."""
    import httptools
    import uvloop

    body = ANSWER_BODY.encode()
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body

    class Answering(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(answer)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Answering, sock=sock)
        await server.serve_forever()

    uvloop.run(serve())


def stack(state_dir: Path, port: int, upstream_url: str, hop: bool) -> None:
    """The gateway's listener in front of a bare app (run in a subprocess: ``--serve``)."""
    import uvicorn

    from raywarden.gateway.heads import ProtocolRefusals
    from raywarden.gateway.protocols import listener_config
    from raywarden.gateway.tls import build_context
    from raywarden.gateway.upstream import Upstream
    from raywarden.secret import Secret

    state = StateDir(state_dir)
    config = state.load_config()
    relay = Upstream(upstream_url, Secret("bench"), 30)
    fixed = ANSWER_BODY.encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await relay.start()
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await relay.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = (await relay.request("GET", PATH, "", {"accept": "application/json"}, None)).body if hop else fixed
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    class NoAudit:  # nothing is refused in this bench; a refusal would fail loudly
        async def append_async(self, record: Any) -> int:
            raise RuntimeError(f"unexpected refusal: {record}")

    tls, _ = build_context(state)
    refusals = ProtocolRefusals(NoAudit(), lambda: None)  # type: ignore[arg-type,return-value]
    listen = Listen(host="127.0.0.1", port=port)
    uvicorn.Server(listener_config(app, listen, config, tls, refusals)).run()


async def load(url: str, ctx: ssl.SSLContext, clients: int, requests: int) -> None:
    connector = aiohttp.TCPConnector(limit=clients, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(count: int) -> None:
            for _ in range(count):
                async with session.get(url + PATH) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"{url}: {resp.status} {await resp.text()}")

        await asyncio.gather(*(client(requests // clients) for _ in range(clients)))


def wait_for(url: str, ctx: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            asyncio.run(load(url, ctx, 1, 1))
            return
        except (OSError, aiohttp.ClientError):
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000, help="requests per target per round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--serve", choices=["stack", "hop"], help=argparse.SUPPRESS)  # the bench's own servers
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        stack(args.state_dir, args.port, args.upstream, args.serve == "hop")
        return
    root = Path(tempfile.mkdtemp(prefix="rw-floor-"))
    os.environ["RAYWARDEN_HOME"] = str(root / "home")
    state = StateDir(root / "state")
    gateway_port = free_port()
    init_state(
        state,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=gateway_port), gateway_workers=1),
        admin_name="admin",
        profile_name="bench",
    )
    ctx = client_ssl(state.access_ca_cert, root / "home" / "profiles" / "bench")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    upstream_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    answering = multiprocessing.Process(target=upstream, args=(sock,), daemon=True)
    answering.start()
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for name, serve in (("stack", "stack"), ("stack+hop", "hop")):
            port = free_port()
            command = [sys.executable, __file__, "--serve", serve, "--state-dir", str(state.root), "--port", str(port)]
            servers[name] = (subprocess.Popen([*command, "--upstream", upstream_url]), f"https://127.0.0.1:{port}")
        gateway = [sys.executable, "-m", "raywarden.gateway", "--state-dir", str(state.root), "--workers", "1"]
        servers["gateway"] = (
            subprocess.Popen([*gateway, "--dashboard-url", upstream_url]),
            f"https://127.0.0.1:{gateway_port}",
        )
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        for _, url in servers.values():
            wait_for(url, ctx)
        for _, url in servers.values():  # warm up: connections, caches
            asyncio.run(load(url, ctx, args.clients, args.clients * 20))
        for round_ in range(args.rounds):
            order = list(servers)[round_ % 3 :] + list(servers)[: round_ % 3]
            for name in order:
                proc, url = servers[name]
                pids = children(proc.pid)
                before = cpu_seconds(pids)
                asyncio.run(load(url, ctx, args.clients, args.requests))
                cpu[name].append((cpu_seconds(pids) - before) / args.requests * 1e6)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        medians = {name: statistics.median(values) for name, values in cpu.items()}
        print(f"\nserver CPU per request, {args.clients} clients, GET {PATH} (median of {args.rounds} rounds)")
        for name, values in cpu.items():
            spread = " / ".join(f"{v:.0f}" for v in values)
            print(f"  {name:10s} {medians[name]:6.0f} us   ({spread})")
        own = medians["gateway"] - medians["stack+hop"]
        print(f"  the gateway's own work: {own:.0f} us per request, {own / medians['gateway']:.0%} of its CPU")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(15)
        answering.terminate()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
