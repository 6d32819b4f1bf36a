"""What a deploy changes, application by application, and what each change is decided on.

Serve's REST API replaces every declarative application at once (those left out are deleted), so a deploy is
read as a list of changes: each application created, changed, left unchanged or deleted. Each created or
changed one is decided as ``serve.deploy`` on a ``NewServeApp``, each deleted one as ``serve.delete`` on its
``ServeApp``; an unchanged one (its config is byte for byte what the gateway last forwarded for it, and its
invoker groups are the same) needs no decision. Applications a job made with ``serve.run`` are not the
REST API's to replace or delete, and are left alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from raywarden.gateway.responses import Refusal
from raywarden.identity.serveapps import ServeAppRecord
from raywarden.policy.request import Entity
from raywarden.policy.serveattrs import new_serve_app_attrs, new_serve_app_entity, serve_app_entity

ChangeKind = Literal["create", "update", "unchanged", "delete"]


@dataclass(frozen=True)
class RayApp:
    """An application as Ray's REST API describes it."""

    name: str
    route_prefix: str | None
    declarative: bool
    config: dict[str, Any]  # deployed_app_config: what the last deploy gave it
    deployments: tuple[str, ...]
    status: str = ""  # Ray's: RUNNING, DEPLOYING, DELETING...


@dataclass
class Change:
    name: str
    kind: ChangeKind
    owner: str
    invoke_groups: tuple[str, ...]
    route_prefix: str | None
    config: dict[str, Any] | None = None  # forwarded (create, update, unchanged)
    config_sha256: str = ""
    entity: Entity | None = None  # decided on (create, update, delete)
    action: str | None = None
    outcome: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "change": self.kind, "owner": self.owner, **self.outcome}


def config_sha256(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def ray_apps(details: Mapping[str, Any]) -> dict[str, RayApp]:
    """The applications in Ray's ``GET /api/serve/applications/`` answer."""
    found: dict[str, RayApp] = {}
    apps = details.get("applications")
    for name, info in apps.items() if isinstance(apps, dict) else []:
        if not isinstance(info, dict):
            continue
        config = info.get("deployed_app_config")
        deployments = info.get("deployments")
        prefix = info.get("route_prefix")
        found[str(name)] = RayApp(
            str(name),
            prefix if isinstance(prefix, str) else None,
            info.get("source") != "imperative",
            config if isinstance(config, dict) else {},
            tuple(sorted(deployments)) if isinstance(deployments, dict) else (),
            str(info.get("status") or ""),
        )
    return found


def takes_paths_from(prefix: str, other: str) -> bool:
    """Whether an application at ``prefix`` takes paths Serve would otherwise route to one at ``other``: it is
    nested under it (Serve tries the longest prefix first). The root prefix is a catch-all for paths nobody
    else routes, so nesting under it takes nothing."""
    return other != "/" and prefix != other and prefix.startswith(other + "/")


def plan_changes(
    wanted: Iterable[tuple[dict[str, Any], tuple[str, ...] | None]],
    current: Mapping[str, RayApp],
    records: Mapping[str, ServeAppRecord],
    deployer: str,
    *,
    replace: bool,
    deleting: Iterable[str] = (),
) -> list[Change]:
    """``wanted``: each application's config as forwarded, and its invoker groups if the request names them.
    ``replace``: the request is the whole set (Ray's own PUT), so applications it leaves out are deleted;
    otherwise the others stay as they are, except those named in ``deleting``."""
    changes: list[Change] = []
    named = set()
    for config, groups in wanted:
        name = str(config.get("name", "default"))
        named.add(name)
        ray = current.get(name)
        if ray is not None and not ray.declarative:
            raise Refusal(
                409,
                f"application {name!r} was made by a job (serve.run); the gateway does not replace it",
                hint="give your application another name, or have the job that made it delete it",
            )
        record = records.get(name)
        owner = record.owner if record is not None else ("" if ray is not None else deployer)
        chosen = tuple(sorted(set(groups))) if groups is not None else (record.invoke_groups if record else ())
        digest = config_sha256(config)
        same = ray is not None and record is not None and record.config_sha256 == digest
        kind: ChangeKind = (
            "unchanged"
            if same and set(chosen) == set(record.invoke_groups if record else ())
            else "update"
            if ray is not None
            else "create"
        )
        prefix = config.get("route_prefix", "/")
        changes.append(Change(name, kind, owner, chosen, prefix, config, digest))
    gone = set(deleting) | ({n for n, a in current.items() if a.declarative} - named if replace else set())
    for name in sorted(gone):
        ray = current.get(name)
        if ray is None:
            raise Refusal(404, f"no Serve application named {name!r}", hint="`raywarden serve list` shows them")
        if not ray.declarative:
            raise Refusal(
                409,
                f"application {name!r} was made by a job (serve.run); the gateway cannot delete it",
                hint="have the job that made it delete it (serve.delete)",
            )
        record = records.get(name)
        changes.append(
            Change(
                name, "delete", record.owner if record else "", record.invoke_groups if record else (), ray.route_prefix
            )
        )
    _check_prefixes(changes, current, named)
    _entities(changes, current, records)
    return changes


def _check_prefixes(changes: list[Change], current: Mapping[str, RayApp], named: set[str]) -> None:
    deleted = {c.name for c in changes if c.kind == "delete"}
    taken = {a.route_prefix: n for n, a in current.items() if n not in named and n not in deleted and a.route_prefix}
    for change in changes:
        if change.kind == "delete" or change.route_prefix is None:
            continue
        other = taken.get(change.route_prefix)
        if other is not None:
            raise Refusal(
                409,
                f"route prefix {change.route_prefix!r} is taken by application {other!r}",
                hint="choose another route_prefix",
            )


def _entities(changes: list[Change], current: Mapping[str, RayApp], records: Mapping[str, ServeAppRecord]) -> None:
    """The entity each created, changed or deleted application is decided on."""
    kept = {c.name for c in changes if c.kind != "delete"}
    deleted = {c.name for c in changes if c.kind == "delete"}
    # Every application that exists once the deploy is done, with its prefix and owner.
    after: dict[str, tuple[str | None, str]] = {
        n: (a.route_prefix, records[n].owner if n in records else "")
        for n, a in current.items()
        if n not in kept and n not in deleted
    }
    after.update({c.name: (c.route_prefix, c.owner) for c in changes if c.kind != "delete"})
    for change in changes:
        if change.kind == "unchanged":
            continue
        if change.kind == "delete":
            ray = current[change.name]
            change.action = "serve.delete"
            change.entity = serve_app_entity(
                change.name,
                route_prefix=ray.route_prefix,
                deployments=ray.deployments,
                owner=change.owner,
                invoke_groups=change.invoke_groups,
            )
            continue
        prefix = change.route_prefix
        overlapped = [
            owner
            for name, (other, owner) in after.items()
            if name != change.name and prefix is not None and other is not None and takes_paths_from(prefix, other)
        ]
        attrs = new_serve_app_attrs(
            change.config or {},
            exists=change.kind == "update",
            owner=change.owner,
            overlapped_owners=overlapped,
            invoke_groups=change.invoke_groups,
        )
        change.action = "serve.deploy"
        change.entity = new_serve_app_entity(attrs)
