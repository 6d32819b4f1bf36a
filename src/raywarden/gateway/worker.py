"""One worker process of the gateway: the whole app, serving connections from the listener it shares with the
other workers, appending to the cluster's one audit log with its own writer (``flock`` and the chain head
picked up from disk: audit/writer.py), and taking its policy set from the supervisor (docs/architecture.md,
"Workers").

The supervisor hands each worker two descriptors: the listening socket and its end of the control
connection, where policy sets arrive as JSON lines
(``{"op": "policy", "files": [[name, text], ...], "cluster": {...}}``) and the worker answers
``{"op": "policy", "version": V}`` once the set is in force (or ``"error"``). When the control connection
closes, the supervisor is gone and the worker stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn

from raywarden.errors import RaywardenError
from raywarden.gateway.app import GatewayApp
from raywarden.gateway.auditsink import LocalAudit
from raywarden.gateway.auditwriter import open_gateway_audit
from raywarden.gateway.serve.server import beside, serve_alongside
from raywarden.gateway.server import build_app, server_config
from raywarden.gateway.tls import server_context
from raywarden.policy.engine import CLUSTER_ID, Entity, PolicyEngine
from raywarden.state import StateDir

log = logging.getLogger("raywarden.gateway")
MAX_CONTROL_LINE = 64 * 1024 * 1024  # a policy set, whole
# For measuring (bench/gateway_bench.py --variant): asyncio's own loop and h11 instead of uvloop and httptools.
LOOP_ENV = "RAYWARDEN_GATEWAY_LOOP"
HTTP_ENV = "RAYWARDEN_GATEWAY_HTTP"


@dataclass(frozen=True)
class WorkerFds:
    listener: int
    control: int
    serve_listener: int | None = None  # the Serve listener's socket (docs/serve.md), when Serve is on

    @classmethod
    def parse(cls, text: str) -> WorkerFds:
        parts = [int(part) for part in text.split(",")]
        return cls(parts[0], parts[1], parts[2] if len(parts) > 2 else None)

    def __str__(self) -> str:
        tail = "" if self.serve_listener is None else f",{self.serve_listener}"
        return f"{self.listener},{self.control}{tail}"


def engine_from_message(message: dict[str, Any]) -> PolicyEngine:
    files = [(str(name), str(text)) for name, text in message["files"]]
    return PolicyEngine.from_sources(files, Entity("Cluster", CLUSTER_ID, dict(message["cluster"])))


def run_worker(
    state: StateDir, dashboard_url: str, prometheus_url: str | None, fds: WorkerFds, serve_url: str | None = None
) -> None:
    loop_factory: Any = None  # asyncio's own loop when uvloop is missing or not wanted
    if os.environ.get(LOOP_ENV, "uvloop") != "asyncio":
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(state, dashboard_url, prometheus_url, fds, serve_url))


async def _serve(
    state: StateDir, dashboard_url: str, prometheus_url: str | None, fds: WorkerFds, serve_url: str | None
) -> None:
    config = state.load_config()
    listener = socket.socket(fileno=fds.listener)
    audit_log = open_gateway_audit(state, config)
    control_reader, control_writer = await asyncio.open_unix_connection(
        sock=socket.socket(fileno=fds.control), limit=MAX_CONTROL_LINE
    )
    audit = LocalAudit(
        audit_log, on_failed=lambda reason: _reply(control_writer, {"op": "audit_failed", "reason": reason})
    )
    first = await _next_policy(control_reader)
    engine = engine_from_message(first)
    app = build_app(state, dashboard_url, prometheus_url, audit=audit, engine=engine, shared=True)[0]
    _reply(control_writer, {"op": "policy", "version": engine.version})

    def handshake_refused(reason: str) -> None:
        # Called on the event loop while it handles the handshake; the record joins the next group commit.
        try:
            audit.append_later({"kind": "tls", "event": "handshake_refused", "decision": "deny", "reason": reason})
        except RaywardenError as exc:
            log.error("could not record a refused handshake: %s", exc.message)

    def tls_reloaded(fields: dict[str, Any]) -> None:
        # Called on the event loop during the handshake that swapped in a renewed certificate (gateway/tls.py):
        # one record per worker, since each swaps on its own.
        try:
            audit.append_later({"kind": "tls", "event": "reload", **fields})
        except RaywardenError as exc:
            log.error("could not record a TLS reload: %s", exc.message)

    # The certificate is renewed by the supervisor (gateway/renewal.py); this context picks up the new files.
    tls = server_context(state, on_refused=handshake_refused, on_reload=tls_reloaded)
    server = uvicorn.Server(server_config(app, config, tls, http=os.environ.get(HTTP_ENV, "auto")))
    serve_server = None
    if fds.serve_listener is not None and serve_url is not None:
        serve_server = beside(state, app, audit, dashboard_url, serve_url, tls)
    serve_socket = None if fds.serve_listener is None else socket.socket(fileno=fds.serve_listener)
    control = asyncio.get_running_loop().create_task(_control(app, audit, server, control_reader, control_writer))
    try:
        await serve_alongside(server, [listener], serve_server, serve_socket)
    finally:
        control.cancel()
        await audit.drain()
        await asyncio.to_thread(audit_log.close)


async def _next_policy(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise SystemExit("the gateway's supervisor closed the control connection")
    message: dict[str, Any] = json.loads(line)
    return message


async def _control(
    app: GatewayApp,
    audit: LocalAudit,
    server: uvicorn.Server,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Policy sets from the supervisor, each swapped in whole; another worker's failed audit log, which fails
    this one's too; the end of the connection stops the worker."""
    try:
        while line := await reader.readline():
            message = json.loads(line)
            if message.get("op") == "audit_failed":
                audit.fail(str(message.get("reason")))
                continue
            if message.get("op") != "policy":
                continue
            try:
                engine = engine_from_message(message)
            except (RaywardenError, KeyError, TypeError, ValueError) as exc:
                _reply(writer, {"op": "policy", "error": str(getattr(exc, "message", exc))})
                continue
            app.engine = engine  # requests already under way finish under the set they started with
            _reply(writer, {"op": "policy", "version": engine.version})
    except (OSError, ValueError) as exc:
        log.error("control connection failed: %s", exc)
    log.warning("the gateway's supervisor is gone: this worker stops")
    server.should_exit = True


def _reply(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
