"""Who owns each Ray Serve application and who may call it, kept by the gateway (Serve's config has no field
for either). An application Ray runs without a row here (a job's ``serve.run``) has no owner: admins only."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from raywarden.identity.store import IdentityStore


@dataclass(frozen=True)
class ServeAppRecord:
    name: str
    owner: str  # SPIFFE ID of the principal that created it through the gateway
    invoke_groups: tuple[str, ...]
    route_prefix: str | None
    config_sha256: str  # of the application's config as the gateway last forwarded it
    deployed_by: str
    deployed_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "invoke_groups": list(self.invoke_groups),
            "route_prefix": self.route_prefix,
            "config_sha256": self.config_sha256,
            "deployed_by": self.deployed_by,
            "deployed_at": self.deployed_at,
        }


_COLUMNS = "name, owner, invoke_groups, route_prefix, config_sha256, deployed_by, deployed_at"


def _record(row: tuple[Any, ...]) -> ServeAppRecord:
    return ServeAppRecord(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5], float(row[6]))


class ServeAppOwners:
    def __init__(self, store: IdentityStore) -> None:
        self.store = store

    def all(self) -> dict[str, ServeAppRecord]:
        with self.store._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM serve_apps ORDER BY name").fetchall()  # noqa: S608
        return {r[0]: _record(r) for r in rows}

    def get(self, name: str) -> ServeAppRecord | None:
        with self.store._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM serve_apps WHERE name = ?", (name,)).fetchone()  # noqa: S608
        return None if row is None else _record(row)

    def apply(self, changed: Iterable[ServeAppRecord], deleted: Iterable[str]) -> None:
        """One deploy's outcome, in one transaction: the apps it created or changed, and those it deleted."""
        with self.store._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM serve_apps WHERE name = ?", [(n,) for n in deleted])
            db.executemany(
                f"INSERT OR REPLACE INTO serve_apps ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",  # noqa: S608
                [
                    (
                        r.name,
                        r.owner,
                        json.dumps(sorted(set(r.invoke_groups))),
                        r.route_prefix,
                        r.config_sha256,
                        r.deployed_by,
                        r.deployed_at,
                    )
                    for r in changed
                ],
            )
            db.execute("COMMIT")

    def set_groups(self, name: str, groups: Iterable[str]) -> bool:
        with self.store._connect() as db:
            cur = db.execute(
                "UPDATE serve_apps SET invoke_groups = ? WHERE name = ?", (json.dumps(sorted(set(groups))), name)
            )
        return cur.rowcount == 1


class DeployLease:
    """One deploy at a time across every gateway process: a row that expires on its own if its holder dies."""

    def __init__(self, store: IdentityStore, holder: str) -> None:
        self.store = store
        self.holder = holder

    def take(self, now: float, ttl_s: float) -> bool:
        with self.store._connect() as db:
            cur = db.execute(
                "INSERT INTO serve_deploy_lease (id, holder, until) VALUES (1, ?1, ?2) "
                "ON CONFLICT(id) DO UPDATE SET holder = ?1, until = ?2 WHERE until < ?3",
                (self.holder, now + ttl_s, now),
            )
        return cur.rowcount == 1

    def give_back(self) -> None:
        with self.store._connect() as db:
            db.execute("DELETE FROM serve_deploy_lease WHERE holder = ?", (self.holder,))
