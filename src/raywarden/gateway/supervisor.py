"""The gateway's supervisor: the process `raywarden up` starts, `status` reports and `down` stops.

It binds the listener once and starts one worker process per core (gateway/worker.py) on that shared socket.
Each worker appends to the cluster's one audit log itself (bench/audit_workers_bench.py measured that against
one writer process fed over sockets: docs/audit.md). The supervisor loads and validates the policy set and
hands the same set to every worker, at start and on SIGHUP (`raywarden policy reload`), recording the reload
only once every worker has it in force; it restarts a worker that dies; it renews the gateway's certificate
at 2/3 of its life (gateway/renewal.py; every worker swaps it in by itself, gateway/tls.py); and it serves the
gateway's metrics, summed over the workers, on a loopback port. docs/architecture.md, "Workers".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from raywarden.audit import AuditLog
from raywarden.config import Listen
from raywarden.errors import ClusterError, RaywardenError
from raywarden.files import ensure_private_dir, write_private
from raywarden.gateway.auditwriter import open_gateway_audit
from raywarden.gateway.gatewaymetrics import MetricsServer
from raywarden.gateway.renewal import start_gateway_renewal
from raywarden.gateway.runinfo import workers_file
from raywarden.gateway.worker import MAX_CONTROL_LINE, WorkerFds
from raywarden.policy.engine import PolicyEngine
from raywarden.policy.entities import cluster_entity
from raywarden.policy.sources import policy_files
from raywarden.state import StateDir

log = logging.getLogger("raywarden.gateway")
READY_TIMEOUT_S = 60.0
RELOAD_TIMEOUT_S = 30.0
STOP_GRACE_S = 12.0
# A worker that keeps dying is restarted at most this often (seconds between starts).
RESTART_BACKOFF_S = 1.0
# How long a stop waits for a certificate renewal under way to finish writing and auditing.
RENEWAL_STOP_S = 10.0


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    control: asyncio.StreamWriter
    started: float
    acks: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    def __init__(
        self,
        state: StateDir,
        dashboard_url: str,
        prometheus_url: str | None,
        workers: int = 0,
        metrics_port: int | None = None,
        serve_url: str | None = None,
    ) -> None:
        self.state = state
        self.dashboard_url = dashboard_url
        self.prometheus_url = prometheus_url
        self.config = state.load_config()
        self.count = workers or self.config.gateway_workers or default_workers()
        self.metrics_port = metrics_port
        # Ray Serve's proxy on loopback: with it, every worker also serves the Serve listener (docs/serve.md).
        self.serve_url = serve_url if self.config.serve_listen is not None else None
        self.serve_listener: socket.socket | None = None
        self.workers: list[Worker] = []
        self._policy: dict[str, Any] = {}
        self._version = ""
        self._stopping = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._last_start = 0.0

    # -- start and stop --------------------------------------------------------------------------------------

    def run(self) -> None:
        ensure_private_dir(self.state.run_dir)
        audit = open_gateway_audit(self.state, self.config)
        try:
            self._load_first(audit)
            listener = _bind(self.config.listen)
            if self.serve_url is not None and self.config.serve_listen is not None:
                try:
                    self.serve_listener = _bind(self.config.serve_listen, flag="--serve-listen")
                except ClusterError:
                    listener.close()
                    raise
            (self.state.run_dir / "job-deletions.log").unlink(missing_ok=True)  # a new gateway caches nothing
            renewer = start_gateway_renewal(self.state, audit)
            try:
                asyncio.run(self._main(audit, listener))
            finally:
                renewer.stop(RENEWAL_STOP_S)
        finally:
            workers_file(self.state).unlink(missing_ok=True)
            with contextlib.suppress(RaywardenError):
                audit.append({"kind": "gateway", "event": "stop"})
            audit.close()

    def _load_first(self, audit: AuditLog) -> None:
        try:
            message, engine = self._load_policies()
        except RaywardenError as exc:
            audit.append({"kind": "policy", "event": "load", "accepted": False, "reason": exc.message})
            raise
        self._policy, self._version = message, engine.version
        audit.append(
            {
                "kind": "policy",
                "event": "load",
                "accepted": True,
                "version": engine.version,
                "sources": list(engine.sources),
            }
        )

    def _load_policies(self) -> tuple[dict[str, Any], PolicyEngine]:
        """The state dir's policy set, validated whole, and the message that gives workers exactly it."""
        files = policy_files(self.state.policy_dir)
        cluster = cluster_entity(self.state.load_config())
        engine = PolicyEngine.from_sources(files, cluster)
        return {"op": "policy", "files": files, "cluster": cluster.attrs, "version": engine.version}, engine

    async def _main(self, audit: AuditLog, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        metrics = MetricsServer.start(self.state, self.metrics_port, lambda: [w.pid for w in self.workers])
        try:
            for _ in range(self.count):
                self.workers.append(await self._spawn(listener))
            await asyncio.gather(*(self._ready(w, READY_TIMEOUT_S) for w in self.workers))
            self._write_workers_file()
            await audit.append_async(
                {
                    "kind": "gateway",
                    "event": "start",
                    "listen": str(self.config.listen),
                    "serve_listen": str(self.config.serve_listen) if self.serve_listener is not None else None,
                    "workers": [w.pid for w in self.workers],
                    "policy_version": self._version,
                    "metrics_port": self.metrics_port,
                }
            )
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload(audit)))
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stopping.set)
            while not self._stopping.is_set():
                await self._watch(listener, audit)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.25)
        finally:
            listener.close()
            if self.serve_listener is not None:
                self.serve_listener.close()
            await self._stop_workers()
            if metrics is not None:
                metrics.stop()

    async def _stop_workers(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)  # uvicorn finishes the requests under way
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(w.proc.poll() is None for w in self.workers):
            await asyncio.sleep(0.05)
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
            for task in worker.tasks:
                task.cancel()

    # -- workers ---------------------------------------------------------------------------------------------

    async def _spawn(self, listener: socket.socket) -> Worker:
        control_mine, control_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        serve_fd = None if self.serve_listener is None else self.serve_listener.fileno()
        fds = WorkerFds(listener.fileno(), control_theirs.fileno(), serve_fd)
        argv = [
            sys.executable,
            "-m",
            "raywarden.gateway",
            "--state-dir",
            str(self.state.root),
            "--dashboard-url",
            self.dashboard_url,
        ]
        if self.prometheus_url:
            argv += ["--prometheus-url", self.prometheus_url]
        if self.serve_url is not None:
            argv += ["--serve-url", self.serve_url]
        argv += ["--worker-fds", str(fds)]
        passed = (fds.listener, fds.control) + (() if serve_fd is None else (serve_fd,))
        try:
            proc = subprocess.Popen(argv, pass_fds=passed, stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            control_theirs.close()
        self._last_start = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=control_mine, limit=MAX_CONTROL_LINE)
        worker = Worker(proc, writer, time.monotonic())
        worker.tasks.append(asyncio.get_running_loop().create_task(self._read(reader, worker.acks)))
        _send(writer, self._policy)
        return worker

    async def _ready(self, worker: Worker, timeout: float) -> None:
        ack = await self._ack(worker, timeout)
        if ack.get("version") != self._version:
            worker.proc.kill()
            raise ClusterError(
                f"gateway worker {worker.pid} did not start: {ack.get('error') or 'no answer'}",
                hint="see the gateway's log",
            )

    async def _ack(self, worker: Worker, timeout: float) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(worker.acks.get(), timeout)
        except TimeoutError:
            return {"error": f"no answer within {timeout:g}s"}

    async def _watch(self, listener: socket.socket, audit: AuditLog) -> None:
        """Restart workers that died (not while stopping), recording each exit."""
        for index, worker in enumerate(self.workers):
            code = worker.proc.poll()
            if code is None or self._stopping.is_set():
                continue
            if time.monotonic() - self._last_start < RESTART_BACKOFF_S:
                return
            for task in worker.tasks:
                task.cancel()
            with contextlib.suppress(ImportError):
                from prometheus_client import multiprocess

                if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
            await audit.append_async({"kind": "gateway", "event": "worker_exit", "pid": worker.pid, "code": code})
            replacement = await self._spawn(listener)
            self.workers[index] = replacement
            await self._ready(replacement, READY_TIMEOUT_S)
            self._write_workers_file()
            await audit.append_async(
                {"kind": "gateway", "event": "worker_start", "pid": replacement.pid, "replaces": worker.pid}
            )

    def _write_workers_file(self) -> None:
        info = {
            "pid": os.getpid(),
            "workers": [w.pid for w in self.workers],
            "metrics_port": self.metrics_port,
            "policy_version": self._version,
        }
        write_private(workers_file(self.state), (json.dumps(info, indent=2) + "\n").encode())

    async def _read(self, reader: asyncio.StreamReader, acks: asyncio.Queue[dict[str, Any]]) -> None:
        """A worker's messages: policy acknowledgements, and a failed audit log, which every worker is told of
        so that all of them refuse (fail closed) until the gateway is restarted."""
        with contextlib.suppress(OSError, ValueError):
            while line := await reader.readline():
                message = json.loads(line)
                if message.get("op") == "audit_failed":
                    log.error("a worker's audit log failed (%s): every worker refuses requests", message.get("reason"))
                    for worker in self.workers:
                        _send(worker.control, message)
                else:
                    acks.put_nowait(message)

    # -- policy reload ---------------------------------------------------------------------------------------

    async def _reload(self, audit: AuditLog) -> None:
        """SIGHUP: a set that loads and validates whole goes to every worker; recorded once all have it."""
        async with self._reloading:
            try:
                message, engine = await asyncio.to_thread(self._load_policies)
            except RaywardenError as exc:
                log.error("policy reload refused, keeping version %s: %s", self._version, exc.message)
                await audit.append_async(
                    {
                        "kind": "policy",
                        "event": "reload",
                        "accepted": False,
                        "reason": exc.message,
                        "version": self._version,
                    }
                )
                return
            self._policy, self._version = message, engine.version
            workers = list(self.workers)
            for worker in workers:
                _send(worker.control, message)
            acks = await asyncio.gather(*(self._ack(w, RELOAD_TIMEOUT_S) for w in workers))
            lagging = [w.pid for w, ack in zip(workers, acks, strict=True) if ack.get("version") != engine.version]
            for worker in workers:
                if worker.pid in lagging:
                    # A worker that cannot take the validated set must not go on deciding with the old one:
                    # it is restarted, and its replacement starts with the new set.
                    worker.proc.kill()
            self._write_workers_file()
            await audit.append_async(
                {
                    "kind": "policy",
                    "event": "reload",
                    "accepted": True,
                    "version": engine.version,
                    "workers": [w.pid for w in workers if w.pid not in lagging],
                    "restarted": lagging,
                }
            )


def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    if not writer.is_closing():
        writer.write(json.dumps(message).encode() + b"\n")


def _bind(listen: Listen, flag: str = "--listen") -> socket.socket:
    """The one listening socket every worker accepts from (inherited, so the kernel hands each connection to
    a worker that is waiting in accept)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as exc:
        sock.close()
        raise ClusterError(f"cannot listen on {listen}: {exc.strerror}", hint=f"pick another {flag}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
