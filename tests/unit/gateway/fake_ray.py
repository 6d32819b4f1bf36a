"""A stand-in for Ray's dashboard on loopback, for offline tests of the gateway app.

It answers the routes the gateway forwards with the shapes Ray 2.60 gives them (job records, state lists,
events, actors, nodes, logs), records every request as it arrived (raw query string included), and lets a
test look at the audit log at the moment a request reaches it: that is how the tests show that the decision
record is durable before anything is forwarded.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from raywarden.gateway import owner_seal

# Ray's own token header is checked like Ray checks it: a request without the gateway's token is refused.
AUTH = "Authorization"


@dataclass
class Received:
    method: str
    path: str
    raw_query: str
    headers: dict[str, str]
    body: bytes
    # What the test's probe saw when the request arrived (for example the audit records written so far).
    probe: Any = None


@dataclass
class FakeRay:
    token: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    probe: Callable[[], Any] | None = None
    # Submission ids left out of the job list (as if submitted after the gateway read it).
    unlisted: set[str] = field(default_factory=set)
    # When set, Ray's job list answer, as is (to show what the gateway does with an answer it cannot read).
    job_list_body: bytes | None = None
    url: str = ""
    # Ray Serve as its REST API describes it: None until the first deploy (or after a DELETE) starts it.
    serve_http: dict[str, Any] | None = None
    serve_apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _next_job: int = 1

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> FakeRay:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application(middlewares=[self._record])
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            server = site._server
            assert server is not None
            port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ray", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    # -- jobs -----------------------------------------------------------------------------------------------

    def add_job(self, submission_id: str | None, owner: str | None, **extra: Any) -> dict[str, Any]:
        job_id = f"{self._next_job:02x}000000"
        self._next_job += 1
        job = {
            "type": "SUBMISSION" if submission_id else "DRIVER",
            "job_id": job_id,
            "submission_id": submission_id,
            "status": "RUNNING",
            "entrypoint": extra.pop("entrypoint", "sleep 60"),
            "metadata": {"raywarden.owner": owner} if owner else {},
            "runtime_env": extra.pop("runtime_env", {}),
            "start_time": 1,
            **extra,
        }
        if owner and submission_id:  # as the gateway submits it: sealed (gateway/owner_seal.py)
            seal = owner_seal.current().seal(submission_id, owner, job["entrypoint"], job["runtime_env"])
            job["metadata"][owner_seal.SEAL_KEY] = seal
        self.jobs.append(job)
        return job

    def find(self, ref: str) -> dict[str, Any] | None:
        """Ray's find_job_by_ids: a driver's hex job id first, then a submission id."""
        for job in self.jobs:
            if job["job_id"] == ref:
                return job
        return next((j for j in self.jobs if j["submission_id"] == ref), None)

    def requests(self, method: str | None = None, path: str | None = None) -> list[Received]:
        """The requests that reached Ray, optionally of one method and path."""
        return [r for r in self.received if (method is None or r.method == method) and (path is None or r.path == path)]

    # -- request handling -----------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        probe = self.probe() if self.probe is not None else None
        self.received.append(
            Received(request.method, request.path, request.rel_url.raw_query_string, dict(request.headers), body, probe)
        )
        if request.headers.get(AUTH) != f"Bearer {self.token}":
            return web.Response(status=401, text="Unauthorized: missing or invalid token")
        return await handler(request)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/api/jobs/" and method == "POST":
            return await self._submit(request)
        if path == "/api/jobs/" and method == "GET" and self.job_list_body is not None:
            return web.Response(body=self.job_list_body, content_type="application/json")
        if path == "/api/jobs/" and method == "GET":
            return web.json_response([j for j in self.jobs if j["submission_id"] not in self.unlisted])
        if path.startswith("/api/jobs/"):
            return await self._job_route(request, path.removeprefix("/api/jobs/"))
        if path == "/api/version":
            return web.json_response({"version": "4", "ray_version": "2.60.0", "ray_commit": "fake"})
        if path.startswith("/api/packages/"):
            return self._package(request)
        if path == "/api/serve/applications/" or path.startswith("/api/v1/applications/"):
            return await self._serve(request)
        answer = self._dashboard(request)
        if answer is not None:
            return answer
        return web.json_response({"result": True, "msg": "", "data": {}})

    async def _submit(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        sid = body.get("submission_id") or body.get("job_id") or f"raysubmit_{secrets.token_hex(8)}"
        if any(j["submission_id"] == sid for j in self.jobs):
            # What Ray 2.60's head answers when its job agent refuses a duplicate submission id.
            return web.Response(
                status=500,
                text="Traceback (most recent call last):\nRuntimeError: Request failed with status code 400: "
                f"ValueError: Job with submission_id {sid} already exists. Please use a different submission_id.",
            )
        metadata = body.get("metadata") or {}
        job = self.add_job(
            sid,
            metadata.get("raywarden.owner"),
            entrypoint=body["entrypoint"],
            runtime_env=body.get("runtime_env") or {},
        )
        job["metadata"] = metadata
        return web.json_response({"job_id": sid, "submission_id": sid})

    async def _job_route(self, request: web.Request, rest: str) -> web.StreamResponse:
        ref, _, tail = rest.partition("/")
        job = self.find(ref)
        if job is None:
            return web.Response(status=404, text=f"Job {ref} does not exist")
        method = request.method
        if tail == "" and method == "GET":
            return web.json_response(job)
        if tail == "" and method == "DELETE":
            self.jobs.remove(job)
            return web.json_response({"deleted": True})
        if tail == "stop" and method == "POST":
            job["status"] = "STOPPED"
            return web.json_response({"stopped": True})
        if tail == "logs" and method == "GET":
            return web.json_response({"logs": f"log of {ref}\n"})
        if tail == "logs/tail" and method == "GET":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str(f"tail of {ref}\n")
            # A job whose id starts with "endless" keeps writing, as a running job under `logs --follow` does.
            while ref.startswith("endless") and not ws.closed:
                await asyncio.sleep(0.05)
                try:
                    await ws.send_str("more\n")
                except ConnectionError:
                    break
            await ws.close()
            return ws
        return web.Response(status=404)

    def add_serve_app(self, name: str, prefix: str | None, *, imperative: bool = False, **config: Any) -> None:
        """An application as Ray runs it (``imperative``: made by a job's serve.run, not by a deploy)."""
        self.serve_http = self.serve_http or {"host": "127.0.0.1", "port": 8000}
        app_config = {"name": name, "route_prefix": prefix, "import_path": "apps:echo", **config}
        self.serve_apps[name] = {
            "name": name,
            "route_prefix": prefix,
            "status": "RUNNING",
            "source": "imperative" if imperative else "declarative",
            "deployed_app_config": None if imperative else app_config,
            "deployments": {"Echo": {"name": "Echo", "status": "HEALTHY"}},
        }

    async def _serve(self, request: web.Request) -> web.Response:
        """Serve's REST API (ray/dashboard/modules/serve/serve_head.py), as far as the gateway uses it."""
        if request.path.endswith("/scale"):
            return web.json_response({"message": "Scaling request received."})
        if request.method == "GET":
            if self.serve_http is None:
                return web.json_response({"controller_info": {}, "proxies": {}, "applications": {}})
            return web.json_response(
                {
                    "proxy_location": "HeadOnly",
                    "http_options": self.serve_http,
                    "grpc_options": {"port": 9000, "grpc_servicer_functions": []},
                    "applications": self.serve_apps,
                }
            )
        if request.method == "DELETE":
            self.serve_http, self.serve_apps = None, {}
            return web.Response()
        body = json.loads(await request.read())
        # Serve keeps the listener of its first start; later settings are ignored.
        self.serve_http = self.serve_http or dict(body.get("http_options") or {"host": "0.0.0.0", "port": 8000})  # noqa: S104
        kept = {n: a for n, a in self.serve_apps.items() if a["source"] == "imperative"}
        for app in body.get("applications", []):
            prefix = app.get("route_prefix", "/")
            if app.get("import_path") == "fail:me":
                return web.Response(status=400, text="ValidationError(model='ServeDeploySchema', errors=[...])")
            kept[app["name"]] = {
                "name": app["name"],
                "route_prefix": prefix,
                "status": "DEPLOYING",
                "source": "declarative",
                "deployed_app_config": app,
                "deployments": {d["name"]: {"name": d["name"]} for d in app.get("deployments", [])},
            }
        self.serve_apps = kept
        return web.Response()

    def _package(self, request: web.Request) -> web.Response:
        stored = getattr(self, "_packages", {})
        self._packages = stored
        if request.method == "PUT":
            stored[request.path] = True
            return web.Response(status=200)
        return web.Response(status=200 if request.path in stored else 404)

    def _dashboard(self, request: web.Request) -> web.Response | None:
        path = request.path
        if path in ("/api/v0/tasks", "/api/v0/actors"):
            kind = "task" if path.endswith("tasks") else "actor"
            entries = [
                {
                    f"{kind}_id": f"{kind}-{job['job_id']}",
                    "job_id": job["job_id"],
                    "name": f"{kind}_of_{job['submission_id'] or job['job_id']}",
                    "runtime_env_info": {"serialized_runtime_env": json.dumps(job.get("runtime_env") or {})},
                }
                for job in self.jobs
            ]
            return _state(entries)
        if path in ("/api/v0/jobs", "/api/v0/placement_groups", "/api/v0/runtime_envs"):
            return _state([])
        if path == "/api/v0/tasks/summarize":
            return web.json_response({"result": True, "msg": "", "data": {"result": {"node_id_to_summary": {}}}})
        if path == "/api/v0/tasks/timeline":
            return web.json_response([{"name": "task", "args": {"job_id": request.query.get("job_id")}}])
        if path == "/events":
            job = request.query.get("job_id")
            events = {j["job_id"]: [{"message": f"event of {j['job_id']}"}] for j in self.jobs}
            if job is not None:
                return web.json_response({"result": True, "data": {"jobId": job, "events": events.get(job, [])}})
            return web.json_response({"result": True, "data": {"events": {**events, "global": []}}})
        if path == "/logical/actors":
            actors = {f"{'ab' * 12}{j['job_id']}": {"jobId": j["job_id"], "name": "a"} for j in self.jobs}
            return web.json_response({"result": True, "data": {"actors": actors}})
        if path == "/nodes":
            return web.json_response({"result": True, "data": {"summary": []}})
        if path.startswith("/nodes/"):
            workers = [{"pid": 1, "jobId": j["job_id"]} for j in self.jobs]
            return web.json_response({"result": True, "data": {"detail": {"hostname": "h", "workers": workers}}})
        if path in ("/api/v0/logs/file", "/api/v0/logs"):
            return web.Response(text=f"log lines for {request.rel_url.raw_query_string}")
        if path == "/api/profiling_enabled":
            return web.json_response({"result": True, "data": {"profilingEnabled": True}})
        return None


def _state(entries: list[dict[str, Any]]) -> web.Response:
    listing = {"total": len(entries), "num_after_truncation": len(entries), "num_filtered": 0, "result": entries}
    return web.json_response({"result": True, "msg": "", "data": {"result": listing}})
