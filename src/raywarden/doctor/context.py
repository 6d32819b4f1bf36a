"""What every check reads: the state dir, its configuration, what `up` started, and the time of the run."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from raywarden.client.profile import Profile, list_profiles
from raywarden.cluster.procs import alive
from raywarden.cluster.runstate import RunState, read_run_state
from raywarden.config import ClusterConfig
from raywarden.errors import RaywardenError
from raywarden.state import StateDir


@dataclass(frozen=True)
class DoctorContext:
    state: StateDir
    config: ClusterConfig
    run: RunState | None
    ray_up: bool
    gateway_up: bool
    now: dt.datetime

    @property
    def running(self) -> bool:
        """Anything of this cluster is running: the checks that talk to processes have something to check."""
        return self.ray_up or self.gateway_up

    def local_profiles(self) -> list[Profile]:
        """Client profiles on this machine that belong to this cluster (the admin profile made by `init`)."""
        try:
            profiles = list_profiles()
        except RaywardenError:
            return []
        root = str(self.state.root)
        return [p for p in profiles if p.state_dir is not None and _same_dir(p.state_dir, root)]


def _same_dir(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def load_context(state: StateDir, *, now: dt.datetime | None = None) -> DoctorContext:
    """Raises ``DoctorUnavailable`` when there is nothing to examine."""
    from raywarden.doctor.report import DoctorUnavailable

    if not state.exists():
        raise DoctorUnavailable(
            f"no raywarden cluster state in {state.root}",
            hint="pass --state-dir DIR (or set RAYWARDEN_STATE_DIR), or create one with `raywarden init`",
        )
    try:
        config = state.load_config()
        run = read_run_state(state)
    except (RaywardenError, ValueError) as exc:
        message = exc.message if isinstance(exc, RaywardenError) else str(exc)
        raise DoctorUnavailable(
            f"cannot read the cluster state: {message}", hint="restore config.json / run/cluster.json from backup"
        ) from None
    ray_up = run is not None and alive(run.ray_pid)
    gateway_up = run is not None and alive(run.gateway_pid)
    return DoctorContext(state, config, run, ray_up, gateway_up, now or dt.datetime.now(dt.timezone.utc))
