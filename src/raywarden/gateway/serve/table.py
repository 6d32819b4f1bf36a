"""The applications Serve routes to, kept fresh in each gateway process, and Serve's own matching rule.

Routes come from Serve's proxy (``GET /-/routes``: exactly what it routes on), polled every second and once
more, at most every 250 ms, before a path is answered as unknown. Each application's deployments and Serve's
listener settings come from Ray's REST API every few seconds; owners and invoker groups from the identity
store (identity/serveapps.py). The listener settings are compared with the ones raywarden pinned (loopback,
head node only, no gRPC): if they drifted (a job restarted Serve elsewhere), every call is refused with 503
until they are back (docs/serve.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from raywarden.gateway.serve.plan import config_sha256
from raywarden.gateway.upstream import Upstream, UpstreamUnavailable
from raywarden.identity.serveapps import ServeAppOwners, ServeAppRecord
from raywarden.policy.request import Entity
from raywarden.policy.serveattrs import serve_app_entity

log = logging.getLogger("raywarden.gateway.serve")
ROUTES_EVERY_S = 1.0
# How long a job's replacement of an application can keep the owner's callers: see ``_owned``.
DETAILS_EVERY_S = 2.0
MISS_REFRESH_S = 0.25
# Serve's proxy says this until its first application exists.
_NOT_POPULATED = "Route table is not populated yet"


@dataclass(frozen=True)
class ServeApp:
    name: str
    route_prefix: str
    deployments: tuple[str, ...]
    owner: str
    invoke_groups: tuple[str, ...]
    entity: Entity = field(compare=False, repr=False)

    def below(self, path: str) -> str:
        """The path below the route prefix, as the application's own routes see it."""
        if self.route_prefix == "/":
            return path
        return path[len(self.route_prefix) :] or "/"


@dataclass(frozen=True)
class Pinned:
    """Serve's listener settings as raywarden started it (cluster/serve.py)."""

    host: str
    port: int
    proxy_location: str = "HeadOnly"


def drift_of(details: dict[str, Any], pinned: Pinned) -> str | None:
    """Why Serve's settings in Ray's REST answer are not the pinned ones, or None when they are."""
    http = details.get("http_options") or {}
    grpc = details.get("grpc_options") or {}
    problems = []
    if http.get("host") != pinned.host or http.get("port") != pinned.port:
        problems.append(f"HTTP proxy on {http.get('host')}:{http.get('port')}, not {pinned.host}:{pinned.port}")
    if details.get("proxy_location") != pinned.proxy_location:
        problems.append(f"proxies at {details.get('proxy_location')!r}, not {pinned.proxy_location!r}")
    if grpc.get("grpc_servicer_functions"):
        problems.append("the gRPC proxy is on")
    return "; ".join(problems) or None


def match_route(routes: tuple[tuple[str, str], ...], path: str) -> tuple[str, str] | None:
    """Serve's own rule (ray/serve/_private/proxy_router.py, match_route): the longest prefix first; a prefix
    matches when the path starts with it and it ends in '/', or the path equals it, or continues with '/'."""
    for prefix, app in routes:
        if path.startswith(prefix) and (prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"):
            return prefix, app
    return None


@dataclass
class Snapshot:
    routes: tuple[tuple[str, str], ...] = ()  # (prefix, app), longest prefix first
    apps: dict[str, ServeApp] = field(default_factory=dict)
    serve_up: bool = False  # Serve's proxy answered its last poll
    drift: str | None = "not checked yet"
    details_at: float = 0.0


class AppTable:
    def __init__(
        self,
        proxy_url: str,
        upstream: Upstream,
        owners: ServeAppOwners,
        pinned: Pinned,
        on_drift: Callable[[str | None], Awaitable[None]] | None = None,
        on_replaced: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.proxy_url = proxy_url.rstrip("/")
        self.upstream = upstream
        self.owners = owners
        self.pinned = pinned
        self.on_drift = on_drift
        self.on_replaced = on_replaced
        # Applications whose running config is not the one deployed through the gateway: seen at the last
        # details fetch, and already reported (a deploy in flight differs for one fetch; a replacement stays).
        self._differing: set[str] = set()
        self._reported: set[str] = set()
        self.snapshot = Snapshot()
        self._session: aiohttp.ClientSession | None = None
        self._details: dict[str, Any] = {}
        self._last_routes = 0.0
        self._details_wall = 0.0  # when details were last asked for, on the clock deploys are recorded with
        self._refreshing: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5, connect=2)
        self._session = aiohttp.ClientSession(timeout=timeout, trust_env=False)
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- lookups ----------------------------------------------------------------------------------------------

    async def find(self, path: str) -> ServeApp | None:
        """The application Serve would route ``path`` to; an unknown path refreshes the routes once first."""
        found = self._lookup(path)
        if found is None and time.monotonic() - self._last_routes >= MISS_REFRESH_S:
            await self.refresh_routes()
            found = self._lookup(path)
        return found

    def _lookup(self, path: str) -> ServeApp | None:
        hit = match_route(self.snapshot.routes, path)
        return self.snapshot.apps.get(hit[1]) if hit else None

    def visible(self) -> list[ServeApp]:
        return sorted(self.snapshot.apps.values(), key=lambda a: a.name)

    # -- refreshing -------------------------------------------------------------------------------------------

    async def refresh_routes(self) -> None:
        """Single flight: callers that miss at once share one request to Serve's proxy."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh(details=False))
        await asyncio.shield(self._refreshing)

    async def refresh_all(self) -> None:
        """After a deploy through this gateway: routes, details and owners at once."""
        await self._refresh(details=True)

    async def _poll(self) -> None:
        while True:
            try:
                due = time.monotonic() - self.snapshot.details_at >= DETAILS_EVERY_S
                await self._refresh(details=due)
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller must outlive any one failure; the next round tries again
                log.exception("refreshing Serve's application table failed")
            await asyncio.sleep(ROUTES_EVERY_S)

    async def _refresh(self, *, details: bool) -> None:
        self._last_routes = time.monotonic()
        routes, up = await self._routes()
        snapshot = self.snapshot
        drift = snapshot.drift
        records = self.owners.all()
        # A deploy through another worker since the last fetch: its config is compared with Ray's at once.
        details = details or any(r.deployed_at >= self._details_wall for r in records.values())
        if details:
            self._details_wall = time.time()
            drift = await self._fetch_details()
        apps = {name: self._app(name, prefix, records.get(name)) for prefix, name in routes}
        if details:
            await self._note_replaced(records)
        ordered = tuple(sorted(((p, n) for p, n in routes), key=lambda r: len(r[0]), reverse=True))
        self.snapshot = Snapshot(ordered, apps, up, drift, time.monotonic() if details else snapshot.details_at)
        if drift != snapshot.drift and self.on_drift is not None:
            await self.on_drift(drift)

    async def _routes(self) -> tuple[list[tuple[str, str]], bool]:
        if self._session is None:
            return [], False
        try:
            async with self._session.get(f"{self.proxy_url}/-/routes") as resp:
                text = await resp.text()
                if resp.status == 503 and _NOT_POPULATED in text:
                    return [], True
                if resp.status != 200:
                    return list((p, n) for p, n in self.snapshot.routes), False
                data = json.loads(text)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            # Serve's proxy is down or restarting: nothing is routed until it answers again.
            return [], False
        if not isinstance(data, dict):
            return [], False
        return [(str(p), str(n)) for p, n in data.items() if isinstance(p, str) and p.startswith("/")], True

    async def _fetch_details(self) -> str | None:
        try:
            answer = await self.upstream.request(
                "GET", "/api/serve/applications/", "", {"accept": "application/json"}, None
            )
            details = json.loads(answer.body) if answer.status == 200 else None
        except (UpstreamUnavailable, ValueError):
            details = None
        if not isinstance(details, dict):
            return "Ray's REST API did not describe Serve"
        self._details = details
        if not details.get("applications") and not details.get("http_options"):
            return "Serve is not running"
        return drift_of(details, self.pinned)

    def _info(self, name: str) -> dict[str, Any] | None:
        apps = self._details.get("applications")
        info = apps.get(name) if isinstance(apps, dict) else None
        return info if isinstance(info, dict) else None

    def _owned(self, info: dict[str, Any] | None, record: ServeAppRecord | None) -> bool:
        """The owner and invoker groups recorded at a deploy through the gateway hold only while Serve runs that
        very config. A job can replace an application under the same name and prefix (``serve.run``, or Ray's
        REST API with the token Ray's workers hold): the replacement is nobody's (admins only), from the next
        details fetch on, before its replicas are likely to take calls."""
        if record is None or info is None or info.get("source") == "imperative":
            return False
        config = info.get("deployed_app_config")
        return isinstance(config, dict) and config_sha256(config) == record.config_sha256

    async def _note_replaced(self, records: dict[str, ServeAppRecord]) -> None:
        differing = {
            name for name, record in records.items() if (info := self._info(name)) and not self._owned(info, record)
        }
        confirmed = differing & self._differing
        fresh = sorted(confirmed - self._reported)
        self._differing, self._reported = differing, (self._reported | confirmed) & differing
        if fresh:
            log.warning("Serve runs applications not as deployed through the gateway: %s", fresh)
            if self.on_replaced is not None:
                await self.on_replaced(fresh)

    def _app(self, name: str, prefix: str, record: ServeAppRecord | None) -> ServeApp:
        info = self._info(name)
        deployments = tuple(sorted((info or {}).get("deployments") or {}))
        owned = self._owned(info, record)
        owner = record.owner if record is not None and owned else ""
        groups = record.invoke_groups if record is not None and owned else ()
        entity = serve_app_entity(name, route_prefix=prefix, deployments=deployments, owner=owner, invoke_groups=groups)
        return ServeApp(name, prefix, deployments, owner, groups, entity)
