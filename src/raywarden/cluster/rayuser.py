"""The OS user Ray, and so every job, runs as: looked up or created, checked, and used to start Ray.

With root, Ray runs as a dedicated unprivileged user (default ``raywarden-ray``: a system user with no login
shell and no home of its own), so that no job can read or write what the control plane owns. Without root,
no user switch is possible and Ray runs as the control plane's user (docs/threat-model.md).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from raywarden.errors import ClusterError, UsageError

DEFAULT_RAY_USER = "raywarden-ray"
NO_LOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")


@dataclass(frozen=True)
class RayUser:
    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        """The user running this process: Ray shares the control plane's OS identity."""
        return self.uid == os.geteuid()

    @classmethod
    def current(cls) -> RayUser:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, os.getegid())

    @classmethod
    def lookup(cls, name: str) -> RayUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ClusterError(
                f"there is no OS user {name!r} to run Ray as",
                hint=f"create it (useradd --system --user-group --shell /usr/sbin/nologin {name}), or leave "
                f"--ray-user out to use {DEFAULT_RAY_USER}, which is created when missing",
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)


def can_switch_users() -> bool:
    return os.geteuid() == 0


def ensure_ray_user(name: str) -> RayUser:
    """The user named ``name``, created as a system user without login when it is the default and missing.

    Refused: root, and the user running the control plane (that would be no separation at all)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        if name != DEFAULT_RAY_USER:
            return RayUser.lookup(name)  # raises with a hint: a user named on the command line must exist
        _create_system_user(name)
    user = RayUser.lookup(name)
    if user.uid == 0 or user.is_current or user.gid in (0, os.getegid()):
        raise UsageError(
            f"Ray cannot run as {name!r} (uid {user.uid}, gid {user.gid}): that is the control plane's own user "
            "or group",
            hint=f"pick an unprivileged user of its own with --ray-user, or leave it out for {DEFAULT_RAY_USER}",
        )
    return user


def _create_system_user(name: str) -> None:
    useradd = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin")
    if useradd is None:
        raise ClusterError(
            f"cannot create the OS user {name!r} for Ray: `useradd` is not installed",
            hint="install the passwd package, or create an unprivileged user and pass it with --ray-user",
        )
    shell = next((s for s in NO_LOGIN_SHELLS if Path(s).exists()), "/bin/false")
    # A system user with a group of its own, no home directory, no login shell: nobody logs in as Ray.
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", shell, name],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and not _exists(name):  # another `up` may have created it at the same time
        raise ClusterError(
            f"cannot create the OS user {name!r} for Ray: {result.stderr.strip()[:300]}",
            hint="create an unprivileged user yourself and pass it with --ray-user",
        )


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_interpreter(user: RayUser, python: str | None = None) -> None:
    """Ray starts from this interpreter and virtualenv: the Ray user must be able to run them and import Ray.

    Checked before anything starts: a venv under a 0700 home is the usual reason it cannot."""
    if user.is_current:
        return
    python = python or sys.executable
    probe = [python, "-c", "import ray"]
    try:
        result = subprocess.run(
            probe,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        failure = None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["no output"])[-1]
    except PermissionError as exc:
        failure = f"{exc.strerror}: {exc.filename or python}"
    if failure is None:
        return
    blocked = _first_closed_folder(Path(python), user) or _first_closed_folder(Path(python).resolve(), user)
    where = f"; {blocked} is closed to it" if blocked else ""
    raise ClusterError(
        f"Ray's user {user.name!r} cannot run {python} with Ray ({failure[:200]}){where}",
        hint="install raywarden in a virtualenv every user can read and enter (for example under /opt), or give "
        "the folders on the way search permission for others (chmod o+x FOLDER); nothing was started",
    )


def _first_closed_folder(path: Path, user: RayUser) -> Path | None:
    """The first folder on the way to ``path`` that others may not enter (o+x missing and not the user's)."""
    for folder in [*reversed(path.parents)]:
        try:
            st = folder.stat()
        except OSError:
            return folder
        mine = st.st_uid == user.uid
        if not (st.st_mode & 0o001 or (mine and st.st_mode & 0o100) or (st.st_gid == user.gid and st.st_mode & 0o010)):
            return folder
    return None
