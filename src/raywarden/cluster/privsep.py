"""Which OS user Ray runs as, decided by `up` and `join` and recorded in the cluster config, and what follows.

As root, Ray runs as a user of its own and jobs never reach the control plane's state. Without root no user
switch is possible: Ray shares the control plane's user, and any job can read the control plane's keys, so
such a cluster admits one principal (its admin) unless its operator accepted that with --shared-os-user.
"""

from __future__ import annotations

import json
from typing import Any

from raywarden.cluster.rayuser import DEFAULT_RAY_USER, RayUser, can_switch_users, check_interpreter, ensure_ray_user
from raywarden.config import ClusterConfig
from raywarden.errors import ConfigError, UsageError
from raywarden.identity.store import IdentityStore, Principal
from raywarden.state import StateDir

SHARED_HINT = (
    "run `raywarden up` as root, so that Ray runs as an OS user of its own; or accept that any job can read "
    "the control plane's keys with `raywarden up --shared-os-user`"
)


def choose_ray_user(
    state: StateDir, config: ClusterConfig, *, ray_user: str | None, shared_os_user: bool
) -> tuple[ClusterConfig, RayUser]:
    """Check the request against what this process may do, record the mode in the config, return Ray's user.

    Raises before anything is started or created when the mode cannot be had."""
    if can_switch_users():
        if shared_os_user:
            raise UsageError(
                "--shared-os-user is for clusters started without root; as root, Ray runs as a user of its own",
                hint="leave --shared-os-user out (name Ray's user with --ray-user if you like)",
            )
        user = ensure_ray_user(ray_user or config.ray_user or DEFAULT_RAY_USER)
        check_interpreter(user)
        updated = config.model_copy(update={"ray_user": user.name, "shared_os_user": False})
    else:
        if ray_user is not None:
            raise UsageError("--ray-user needs root: only root can start Ray as another user", hint=SHARED_HINT)
        if config.ray_user is not None and not shared_os_user:
            raise ConfigError(
                f"this cluster runs Ray as the OS user {config.ray_user!r}, which needs root", hint=SHARED_HINT
            )
        if not shared_os_user:
            require_one_principal(state)
        user = RayUser.current()
        updated = config.model_copy(update={"ray_user": None, "shared_os_user": shared_os_user})
    if updated != config:
        state.save_config(updated)
    return updated, user


def active_principals(state: StateDir) -> list[Principal]:
    if not state.identity_db.exists():
        return []
    return [p for p in IdentityStore.open(state.identity_db).list_principals() if not p.disabled]


def open_oidc_issuers(state: StateDir) -> list[str]:
    """Issuers in oidc.json that admit people nobody added (``allow_unregistered``, true by default)."""
    path = state.root / "oidc.json"
    try:
        data: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return [f"(unreadable {path})"]
    issuers = data.get("issuers", []) if isinstance(data, dict) else []
    return [
        str(i.get("issuer", "?"))
        for i in issuers
        if isinstance(i, dict) and i.get("allow_unregistered", True) is not False
    ]


def principal_problem(state: StateDir, *, adding: str | None = None) -> str | None:
    """Why this cluster, whose Ray shares the control plane's user, holds (or would hold) more than one
    principal; None when it is just its admin."""
    others = [p.spiffe_id for p in active_principals(state) if p.spiffe_id != adding]
    if adding is not None and others:
        return f"it already has a principal ({others[0]}) and would gain {adding}"
    if adding is None and len(others) > 1:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"it has {len(others)} active principals ({shown})"
    issuers = open_oidc_issuers(state)
    if issuers:
        return f"oidc.json lets anyone from {', '.join(issuers)} sign in (allow_unregistered)"
    return None


def require_one_principal(state: StateDir) -> None:
    problem = principal_problem(state)
    if problem is not None:
        raise ConfigError(
            "without root, Ray would run as the control plane's OS user, where any job can read its keys; "
            f"a cluster like that is for one admin, and {problem}",
            hint=SHARED_HINT + '; or disable the other principals (set "allow_unregistered": false in oidc.json)',
        )


def require_room_for(state: StateDir, config: ClusterConfig, spiffe_id: str, what: str) -> None:
    """Refuse ``what`` (adding or enrolling ``spiffe_id``) on a cluster that admits its admin only."""
    if config.admits_principals:
        return
    problem = principal_problem(state, adding=spiffe_id)
    if problem is not None:
        raise UsageError(
            f"refused to {what}: this cluster's Ray runs as the control plane's own OS user (it was started "
            f"without root), so any job could read the control plane's keys; it admits one principal, and {problem}",
            hint=SHARED_HINT,
        )
