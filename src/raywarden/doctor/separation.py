"""Privilege separation: Ray and its jobs run as a user of their own that cannot reach the control plane.

Checks the recorded mode (and, when Ray shares the control plane's user, that the cluster has one principal),
which users the running processes have, Ray's own folder, what Ray's user can open (by trying, as that user),
and the firewall's owner rules.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import sys
from pathlib import Path

from raywarden.cluster import firewall, privsep, raydir
from raywarden.cluster.procs import alive
from raywarden.cluster.ray_head import cluster_pids
from raywarden.cluster.rayuser import RayUser
from raywarden.doctor.context import DoctorContext
from raywarden.doctor.report import Check, command, failed, passed, skipped, warned

# Ray's folder holds these, and whatever Ray and its jobs add; never a copy of a control-plane secret.
CONTROL_PLANE_SECRETS = ("access_ca_key", "internal_ca_key", "gateway_key", "audit_key")
# Run as Ray's user: try to open each path for reading, print the ones that opened.
_TRY_OPEN = """
import sys
for path in sys.argv[1:]:
    try:
        open(path, "rb").close()
    except OSError:
        continue
    print(path)
"""


def checks(ctx: DoctorContext) -> list[Check]:
    user, problem = _ray_user(ctx)
    results = [_mode(ctx, user, problem)]
    if user is None or user.is_current:
        why = f"skipped: {problem}" if problem else "skipped: Ray shares the control plane's OS user"
        return [*results, *(skipped(f"separation.{c}", why) for c in _SEPARATED_ONLY)]
    results += [_ray_folder(ctx, user), _reach(ctx, user)]
    if not ctx.running:
        return [*results, skipped("separation.processes"), skipped("separation.firewall")]
    return [*results, _processes(ctx, user), _firewall(ctx, user)]


_SEPARATED_ONLY = ("ray-folder", "reach", "processes", "firewall")


def _restart_as_root(ctx: DoctorContext) -> str:
    root = ctx.state.root
    return (
        "as root: "
        + command("raywarden", "down", "--state-dir", root)
        + " && "
        + command("raywarden", "up", "--state-dir", root)
    )


def _ray_user(ctx: DoctorContext) -> tuple[RayUser | None, str | None]:
    name = ctx.config.ray_user
    if name is None:
        return RayUser.current(), None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None, f"Ray's user {name!r} does not exist on this host"
    return RayUser(entry.pw_name, entry.pw_uid, entry.pw_gid), None


def _mode(ctx: DoctorContext, user: RayUser | None, problem: str | None) -> Check:
    if user is None and not ctx.running:
        return passed("separation.mode", f"Ray will run as {ctx.config.ray_user}, which `up` creates as root")
    if user is None:
        return failed("separation.mode", problem or "Ray's user is missing", _restart_as_root(ctx))
    if not user.is_current:
        return passed(
            "separation.mode",
            f"Ray and its jobs run as {user.name} (uid {user.uid}), the control plane as uid {os.geteuid()}",
            ray_user=user.name,
            ray_uid=user.uid,
        )
    many = privsep.principal_problem(ctx.state)
    flag = " (started with --shared-os-user)" if ctx.config.shared_os_user else ""
    if many is not None:
        return failed(
            "separation.mode",
            f"Ray shares the control plane's OS user{flag}, so any job can read its keys and act as anyone; {many}",
            _restart_as_root(ctx) + " (Ray then runs as an OS user of its own); or disable every principal but "
            "the admin (`raywarden user disable NAME`, `raywarden sa disable NAME`)",
        )
    return passed(
        "separation.mode",
        f"Ray shares the control plane's OS user{flag} (started without root): acceptable for its one admin",
        ray_uid=user.uid,
    )


def _ray_folder(ctx: DoctorContext, user: RayUser) -> Check:
    folder = ctx.state.ray_dir
    fix = _restart_as_root(ctx)
    try:
        st = folder.lstat()
        parent = folder.parent.lstat()
    except FileNotFoundError:
        if ctx.running:
            return failed("separation.ray-folder", f"Ray's folder {folder} is missing", fix)
        return skipped("separation.ray-folder", f"skipped: Ray's folder {folder} does not exist yet (`up` makes it)")
    problems = []
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != user.uid or stat.S_IMODE(st.st_mode) & 0o077:
        problems.append(
            f"{folder} is not a 0700 folder of {user.name}'s ({stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid})"
        )
    if parent.st_uid != os.geteuid() or parent.st_mode & 0o022:
        problems.append(f"{folder.parent} is not the control plane's, or others may write to it")
    problems += _copied_secrets(ctx, folder)
    problems += _unsealed(ctx.state.ray_temp_dir, user)
    if problems:
        return failed("separation.ray-folder", "; ".join(problems), fix)
    return passed(
        "separation.ray-folder",
        f"Ray's folder {folder} is {user.name}'s, 0700, without any control-plane key; Ray's temp, session, "
        f"sockets, logs and runtime-env folders are root's with group {user.name}, 0770 (Ray cannot reopen them)",
    )


def _copied_secrets(ctx: DoctorContext, folder: Path) -> list[str]:
    secrets = {}
    for name in CONTROL_PLANE_SECRETS:
        path: Path = getattr(ctx.state, name)
        try:
            secrets[path.read_bytes()] = path.name
        except OSError:
            continue
    found = []
    limit = max((len(s) for s in secrets), default=0) + 1
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size < limit:
            data = _read_plain_file(folder, entry.name, limit)
            if data in secrets:
                found.append(f"{entry.path} is a copy of the control plane's {secrets[data]}")
    return found


def _read_plain_file(folder: Path, name: str, limit: int) -> bytes | None:
    """At most ``limit`` bytes of the regular file ``name`` in a folder of Ray's user: never through a link, never
    a FIFO or device that a job swapped in after the listing (doctor runs as the control plane's user)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _unsealed(temp: Path, user: RayUser) -> list[str]:
    if not temp.is_dir():
        return []
    problems = [f"{p} is writable by everyone" for p in raydir.shared_folders(temp)]
    sealed = [temp, *[p for p in temp.glob("session_*") if _plain_dir(p, temp)]]
    for session in sealed[1:]:
        sealed += [session / rel for rel in raydir.SESSION_SHARED if _plain_dir(session / rel, temp)]
    for path in sealed:
        st = path.lstat()
        if st.st_mode & 0o007 or (st.st_uid == user.uid and st.st_mode & 0o070):
            problems.append(f"{path} is open ({stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid})")
    return problems[:10]


def _plain_dir(path: Path, base: Path) -> bool:
    """``path`` is a folder reached from ``base`` without any link on the way (a job may have planted one)."""
    for part in (path, *path.parents):
        if part == base:
            return True
        try:
            if not stat.S_ISDIR(part.lstat().st_mode):
                return False
        except OSError:
            return False
    return False


def _reach(ctx: DoctorContext, user: RayUser) -> Check:
    """Open, as Ray's user, what it must never read: if one opens, a job can read it too."""
    state = ctx.state
    paths = [state.config_path, state.identity_db, state.audit_key, state.access_ca_key, state.internal_ca_key]
    paths += [state.gateway_key, *sorted(state.audit_dir.glob("audit-*.jsonl"))[:1]]
    paths += [p.key_path for p in ctx.local_profiles()]
    if ctx.run is not None and ctx.gateway_up:
        paths += [Path(f"/proc/{ctx.run.gateway_pid}/{entry}") for entry in ("environ", "maps", "mem")]
    argv = [sys.executable, "-I", "-S", "-c", _TRY_OPEN, *map(str, paths)]
    try:
        result = subprocess.run(
            argv,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return warned("separation.reach", f"cannot run a check as {user.name}: {exc}", "run doctor as root")
    opened = result.stdout.split()
    if result.returncode != 0:
        return warned(
            "separation.reach", f"the check as {user.name} failed: {result.stderr.strip()[-200:]}", "run doctor as root"
        )
    if opened:
        return failed(
            "separation.reach",
            f"Ray's user {user.name} can open: {', '.join(opened)}",
            command("chmod", "700", state.root) + f" and make sure no folder above it lets {user.name} in",
            paths=opened,
        )
    return passed(
        "separation.reach",
        f"as {user.name}, none of {len(paths)} control-plane files and /proc entries (CA, gateway and audit keys, "
        "identity store, config, audit log, client keys, the gateway's environ, maps and mem) opens",
    )


def _uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                real, effective = line.split()[1:3]
                return int(effective) if real == effective else -1
    except (OSError, ValueError):
        return None
    return None


def _processes(ctx: DoctorContext, user: RayUser) -> Check:
    run = ctx.run
    if run is None or not ctx.ray_up:
        return skipped("separation.processes", "skipped: Ray is not running")
    me = os.geteuid()
    ray_pids = cluster_pids(ctx.state, run.ray_pid)
    wrong = [
        f"Ray process {pid} runs as uid {_uid_of(pid)}" for pid in ray_pids if _uid_of(pid) not in (user.uid, None)
    ]
    control = [("gateway", run.gateway_pid if ctx.gateway_up else None), ("Prometheus", run.prometheus_pid)]
    for what, pid in control:
        if pid is not None and alive(pid) and _uid_of(pid) not in (me, None):
            wrong.append(f"the {what} (pid {pid}) runs as uid {_uid_of(pid)}, not the control plane's {me}")
    if wrong:
        return failed("separation.processes", "; ".join(wrong[:5]), _restart_as_root(ctx))
    count = len(ray_pids)
    return passed(
        "separation.processes",
        f"all {count} Ray processes run as {user.name} (uid {user.uid}); the gateway and Prometheus as uid {me}",
    )


_OWNERS = re.compile(r"meta skuid != (\{[^}]*\}|\d+) tcp dport @(\w+)")
# The gateway's own metrics are the control plane's alone (cluster/firewall.py); Ray's ports admit both users.
_CONTROL_PLANE_ONLY = "control_ports"


def _firewall(ctx: DoctorContext, user: RayUser) -> Check:
    if ctx.run is None or not ctx.run.firewall.startswith("installed"):
        why = ctx.run.firewall if ctx.run else "cluster is down"
        return warned(
            "separation.firewall",
            f"no firewall table, so any local user may connect to Ray's loopback ports ({why})",
            _restart_as_root(ctx) + " with nftables installed",
        )
    nft = firewall.nft_path()
    if nft is None or os.geteuid() != 0:
        return skipped("separation.firewall", "skipped: reading nftables rules needs root and nft")
    table = firewall.table_name(ctx.state)
    listed = subprocess.run(
        [nft, "list", "table", "inet", table], capture_output=True, text=True, check=False, timeout=10
    )
    if listed.returncode != 0:
        return failed("separation.firewall", f"nftables table {table} is not loaded", _restart_as_root(ctx))
    rules = _OWNERS.findall(listed.stdout)
    wanted = {os.geteuid(), user.uid}
    seen = [{int(u) for u in re.findall(r"\d+", uids)} for uids, _ in rules]
    expected = [{os.geteuid()} if ports == _CONTROL_PLANE_ONLY else wanted for _, ports in rules]
    if len(seen) < 2 or seen != expected:
        return failed(
            "separation.firewall",
            f"the owner rules of table {table} admit uids {sorted(set().union(*seen)) if seen else 'anyone'}, "
            f"not exactly Ray's ({user.uid}) and the control plane's ({os.geteuid()})",
            _restart_as_root(ctx),
        )
    return passed(
        "separation.firewall",
        f"on this host only uids {sorted(wanted)} (Ray's and the control plane's) may connect to Ray's ports",
    )
