"""Serve's control routes on the API listener (``kind="serve"``; the route's ``serve_op`` says which): deploy,
delete, scale, list, and who may call an application.

A deploy (Ray's own ``PUT /api/serve/applications/``, which stock `serve deploy` sends, or raywarden's
``PUT /raywarden/v1/serve/applications``, which adds to the applications Ray runs) is parsed within bounds
(deployschema.py), read as a list of changes (plan.py), and each change decided; any refusal refuses the whole
request. Deploys run one at a time across every gateway process. The body Ray receives is re-serialised from
what was parsed, with Serve's listener pinned; the deployer becomes the owner of what it creates, recorded in
the identity store once Ray accepted the deploy.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from raywarden.gateway import responses
from raywarden.gateway.authn import Identity
from raywarden.gateway.authz import CLUSTER, Viewer, decide, viewer_for
from raywarden.gateway.bodies import load_json_object
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import Services, authenticate, body_of, relay
from raywarden.gateway.jobaccess import redact_runtime_envs
from raywarden.gateway.request import encode_path
from raywarden.gateway.responses import Refusal
from raywarden.gateway.route_model import Routed
from raywarden.gateway.serve.deployschema import GROUP_NAME, parse_deploy
from raywarden.gateway.serve.plan import Change, RayApp, config_sha256, plan_changes, ray_apps
from raywarden.gateway.serve.table import AppTable, Pinned
from raywarden.gateway.upstream import UpstreamResponse, UpstreamUnavailable
from raywarden.identity.serveapps import DeployLease, ServeAppOwners, ServeAppRecord
from raywarden.policy.serveattrs import new_serve_app_attrs, new_serve_app_entity, serve_app_entity

APPS_PATH = "/api/serve/applications/"
LEASE_WAIT_S = 60.0
# Longer than any deploy request to Ray takes; a lease whose holder died lapses after this.
LEASE_TTL_S = 600.0
HINT_DEPLOY = "`raywarden serve deploy CONFIG` deploys only your applications and leaves the others as they are"
NOT_ENABLED = Refusal(
    503,
    "Ray Serve is not enabled on this cluster",
    reason="Serve is not enabled (no serve_listen in the cluster config)",
    hint="start the cluster with `raywarden up --serve-listen HOST:PORT`",
)


class ServeControl:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.upstream = services.upstream
        self.owners = ServeAppOwners(services.authenticator.store)
        self.lease = DeployLease(services.authenticator.store, f"{os.getpid()}-{secrets.token_hex(4)}")
        self._one_deploy = asyncio.Lock()
        self.pinned: Pinned | None = None
        self.table: AppTable | None = None

    def attach(self, pinned: Pinned, table: AppTable | None) -> None:
        """Serve is enabled: its pinned listener (written into every deploy) and this process's app table."""
        self.pinned, self.table = pinned, table

    async def handle(self, ex: Exchange, found: Routed, request: Request) -> Response:
        identity = await authenticate(self.services, ex, request.scope, session=found.route.session)
        body = await body_of(self.services, request, found.route)
        op = found.route.serve_op
        if op == "list":
            return await self._list(ex, identity, found)
        if op == "scale":
            return await self._scale(ex, identity, found, body)
        if op == "groups":
            return await self._groups(ex, identity, found.params["app_name"], body)
        if op is None:
            raise Refusal(500, "the gateway failed on this request", reason="a Serve route without serve_op")
        return await self._deploy(ex, identity, op, found.params.get("app_name"), body)

    # -- deploy and delete ------------------------------------------------------------------------------------

    async def _deploy(
        self, ex: Exchange, identity: Identity, op: str, app_name: str | None, body: bytes | None
    ) -> Response:
        pinned = self.pinned
        if pinned is None:
            raise NOT_ENABLED
        pinned_http = {"host": pinned.host, "port": pinned.port}
        wanted: list[tuple[dict[str, Any], tuple[str, ...] | None]] = []
        if op in ("replace", "merge"):
            parsed, replaced = parse_deploy(body or b"{}", pinned_http)
            grants = parsed.raywarden.apps if parsed.raywarden else {}
            for app in parsed.applications:
                given = grants.get(app.name)
                wanted.append((app.config(), tuple(given.invoke_groups) if given is not None else None))
            if replaced:
                ex.extra["replaced_settings"] = replaced
        async with self._deploying():
            current = ray_apps(await self._details())
            records = self.owners.all()
            if op == "merge":
                # Ray's PUT replaces the whole set: every other declarative application goes along unchanged.
                names = {c.get("name", "default") for c, _ in wanted}
                kept = _kept(current, names)
            else:
                kept = []
            deleting = [app_name] if op == "delete_one" and app_name else []
            if op == "delete_one":
                kept = _kept(current, {app_name} if app_name else set())
            changes = plan_changes(
                [*wanted, *kept], current, records, identity.spiffe_id, replace=op != "merge", deleting=deleting
            )
            # Applications carried along unchanged are not the caller's change: no decision, no record.
            carried = {str(c.get("name", "default")) for c, _ in kept}
            self._decide(ex, identity, [c for c in changes if c.name not in carried or c.kind == "delete"])
            await ex.allow()
            forwarded = [c.config for c in changes if c.config is not None]
            answer = await self._put(pinned_http, forwarded)
            if answer.status == 200:
                self._record(changes, carried, identity.spiffe_id)
        if self.table is not None:
            await self.table.refresh_all()
        if op == "replace" or answer.status != 200:
            return await relay(ex, answer)
        mine = [c.summary() for c in changes if c.name not in carried or c.kind == "delete"]
        await ex.finish(200)
        return _json({"applications": mine})

    def _decide(self, ex: Exchange, identity: Identity, changes: list[Change]) -> None:
        viewer = viewer_for(ex, identity)
        refused: list[tuple[Change, str]] = []
        for change in changes:
            if change.entity is None or change.action is None:
                change.outcome = {"decision": "unchanged"}
                continue
            decision = viewer.decide(change.action, change.entity)
            change.outcome = {"action": change.action, "decision": "allow" if decision.allowed else "deny"}
            change.outcome["policy_ids"] = list(decision.policy_ids)
            if not decision.allowed:
                refused.append((change, decision.reason))
                decide(ex, viewer, change.action, change.entity, identity.groups)  # the record replays this one
        ex.extra["apps"] = [c.summary() for c in changes]
        ex.action = "serve.deploy" if not refused else refused[0][0].action
        if not refused and changes:
            last = next((c for c in reversed(changes) if c.entity is not None and c.action is not None), None)
            if last is not None and last.entity is not None and last.action is not None:
                decide(ex, viewer, last.action, last.entity, identity.groups)
        if refused:
            listing = ", ".join(f"{c.action} on {c.name!r}" for c, _ in refused)
            raise Refusal(
                403,
                f"forbidden: {listing}",
                reason="; ".join(f"{c.name}: {reason}" for c, reason in refused),
                hint=f"only an application's owner and admins may change or delete it; {HINT_DEPLOY}",
            )

    def _record(self, changes: list[Change], carried: set[str], deployer: str) -> None:
        now = time.time()
        self.owners.apply(
            [
                ServeAppRecord(c.name, c.owner, c.invoke_groups, c.route_prefix, c.config_sha256, deployer, now)
                for c in changes
                if c.kind in ("create", "update") and c.name not in carried  # unchanged: its deployer stays
            ],
            [c.name for c in changes if c.kind == "delete"],
        )

    async def _put(self, http: dict[str, Any], applications: list[dict[str, Any]]) -> UpstreamResponse:
        body = {
            "proxy_location": "HeadOnly",
            "http_options": http,
            "grpc_options": {"grpc_servicer_functions": []},
            "applications": applications,
        }
        headers = {"content-type": "application/json", "accept": "application/json"}
        return await self.upstream.request("PUT", APPS_PATH, "", headers, json.dumps(body).encode())

    async def _details(self) -> dict[str, Any]:
        answer = await self.upstream.request("GET", APPS_PATH, "", {"accept": "application/json"}, None)
        if answer.status != 200:
            raise UpstreamUnavailable(f"Ray answered {answer.status} for Serve's applications")
        try:
            details = json.loads(answer.body)
        except ValueError:
            raise UpstreamUnavailable("Ray's description of Serve is not JSON") from None
        if not isinstance(details, dict):
            raise UpstreamUnavailable("Ray's description of Serve is not an object")
        return details

    @asynccontextmanager
    async def _deploying(self) -> AsyncIterator[None]:
        """One deploy at a time: in this process (a lock), and across processes (a lease in the identity store,
        which expires on its own should its holder die)."""
        async with self._one_deploy:
            deadline = time.monotonic() + LEASE_WAIT_S
            while not self.lease.take(time.time(), LEASE_TTL_S):
                if time.monotonic() > deadline:
                    raise Refusal(409, "another deploy is in progress", hint="retry when it is done")
                await asyncio.sleep(0.1)
            try:
                yield
            finally:
                self.lease.give_back()

    # -- scale, groups, list ----------------------------------------------------------------------------------

    async def _app(self, name: str) -> tuple[RayApp, ServeAppRecord | None]:
        app = ray_apps(await self._details()).get(name)
        if app is None:
            raise Refusal(404, f"no Serve application named {name!r}", hint="`raywarden serve list` shows them")
        return app, self.owners.get(name)

    async def _scale(self, ex: Exchange, identity: Identity, found: Routed, body: bytes | None) -> Response:
        app, record = await self._app(found.params["app_name"])
        entity = serve_app_entity(
            app.name,
            route_prefix=app.route_prefix,
            deployments=app.deployments,
            owner=record.owner if record else "",
            invoke_groups=record.invoke_groups if record else (),
        )
        decision = decide(ex, viewer_for(ex, identity), "serve.scale", entity, identity.groups)
        if not decision.allowed:
            raise Refusal(403, "forbidden", reason=decision.reason, hint=responses.HINT_ASK_ADMIN)
        await ex.allow()
        payload = json.dumps(load_json_object(body, what="scale request")).encode()
        path = encode_path(found.route.upstream_path(found.target.path))
        answer = await self.upstream.request("POST", path, "", {"content-type": "application/json"}, payload)
        return await relay(ex, answer)

    async def _groups(self, ex: Exchange, identity: Identity, name: str, body: bytes | None) -> Response:
        """Who may call an application: decided as a change of the application (``serve.deploy``)."""
        data = load_json_object(body, what="groups request")
        groups = data.get("invoke_groups")
        if not isinstance(groups, list) or not all(isinstance(g, str) and GROUP_NAME.fullmatch(g) for g in groups):
            raise Refusal(400, "invoke_groups must be a list of group names", hint='send {"invoke_groups": ["g"]}')
        async with self._deploying():
            app, record = await self._app(name)
            owner = record.owner if record else ""
            attrs = new_serve_app_attrs(
                app.config, exists=True, owner=owner, overlapped_owners=[], invoke_groups=groups
            )
            entity = new_serve_app_entity(attrs)
            decision = decide(ex, viewer_for(ex, identity), "serve.deploy", entity, identity.groups)
            if not decision.allowed:
                raise Refusal(403, "forbidden", reason=decision.reason, hint="only the owner and admins may do this")
            await ex.allow()
            chosen = tuple(sorted(set(groups)))
            sha = record.config_sha256 if record else config_sha256(app.config)
            self.owners.apply(
                [ServeAppRecord(name, owner, chosen, app.route_prefix, sha, identity.spiffe_id, time.time())], []
            )
        if self.table is not None:
            await self.table.refresh_all()
        await ex.finish(200, invoke_groups=list(chosen))
        return _json({"name": name, "owner": owner, "invoke_groups": list(chosen)})

    async def _list(self, ex: Exchange, identity: Identity, found: Routed) -> Response:
        """Ray's description of Serve, with env var values only where the caller may read an application's
        configuration (``serve.read_env``); outside applications (Serve's own settings) never."""
        viewer = viewer_for(ex, identity)
        decision = decide(ex, viewer, found.route.action, CLUSTER, identity.groups)
        if not decision.allowed:
            raise Refusal(403, "forbidden", reason=decision.reason, hint=responses.HINT_ASK_ADMIN)
        await ex.allow()
        path = encode_path(found.route.upstream_path(found.target.path))
        answer = await self.upstream.request(
            "GET", path, found.target.query_string, {"accept": "application/json"}, None
        )
        if answer.status != 200:
            return await relay(ex, answer)
        try:
            details = json.loads(answer.body)
        except ValueError:
            raise Refusal(502, "Ray's answer could not be checked", reason="Serve details are not JSON") from None
        shown, hidden = self._redact(viewer, details)
        await ex.finish(200, shown=shown, redacted=hidden)
        return Response(json.dumps(details), 200, media_type="application/json", headers=_gateway_headers())

    def _redact(self, viewer: Viewer, details: Any) -> tuple[int, int]:
        if not isinstance(details, dict):
            return 0, 0
        records = self.owners.all()
        apps = details.get("applications")
        shown = hidden = 0
        if isinstance(apps, dict):
            for name, info in list(apps.items()):
                record = records.get(str(name))
                entity = serve_app_entity(
                    str(name),
                    route_prefix=info.get("route_prefix") if isinstance(info, dict) else None,
                    deployments=(info.get("deployments") or {}) if isinstance(info, dict) else (),
                    owner=record.owner if record else "",
                    invoke_groups=record.invoke_groups if record else (),
                )
                if viewer.decide("serve.read_env", entity).allowed:
                    shown += 1
                else:
                    apps[name] = redact_runtime_envs(info)
                    hidden += 1
        for key in [k for k in details if k != "applications"]:
            details[key] = redact_runtime_envs(details[key])
        return shown, hidden


def _kept(current: dict[str, RayApp], changed: set[str]) -> list[tuple[dict[str, Any], None]]:
    """The other declarative applications, sent along unchanged (Ray's PUT replaces the whole set). One being
    deleted stays deleted; one whose config Ray does not show cannot be sent back, so the deploy waits."""
    kept: list[tuple[dict[str, Any], None]] = []
    for name, app in current.items():
        if not app.declarative or name in changed or app.status == "DELETING":
            continue
        if not app.config:
            raise Refusal(
                409,
                f"application {name!r} is changing and its configuration is not known yet",
                reason=f"no deployed_app_config for {name!r}",
                hint="retry in a few seconds",
            )
        kept.append((app.config, None))
    return kept


def _gateway_headers() -> dict[str, str]:
    return {responses.GATEWAY_HEADER[0]: responses.GATEWAY_HEADER[1], "cache-control": "no-store"}


def _json(body: dict[str, Any]) -> Response:
    return JSONResponse(body, headers=_gateway_headers())
