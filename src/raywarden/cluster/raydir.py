"""Ray's own folder: what Ray needs to run, and nothing more, where the control plane's state is out of reach.

Layout (docs/threat-model.md), for a cluster whose Ray runs as a user of its own::

    /var/lib/raywarden/            root, 0711
      ID/                          root, 0711: this cluster's runtime folder (outside the state dir)
        prometheus/                root, 0700: the cluster's Prometheus data (control plane)
        ray-start.log              root, 0600: `ray start`'s output (Ray writes to the descriptor it inherits)
        ray/                       the Ray user, 0700: Ray's own folder
          node.crt node.key        the node's certificate and key (copies; the state dir keeps the originals)
          internal-ca.crt          the internal CA's certificate (never its key)
          ray-token                Ray's token
          cache/                   XDG_CACHE_HOME of Ray and its jobs
          tmp/                     Ray's temp dir (sessions, sockets, logs, jobs' working dirs)
        home/                      root, 0755, empty: HOME of Ray and its jobs (no job can plant config there)
        pip.conf                   root, 0644, empty: PIP_CONFIG_FILE (pip then skips per-user config)

Without root, Ray runs as the control plane's user: the folder is ``/tmp/rw-ID/ray`` and Ray reads its
credentials from the state dir, which it could read anyway.

The control plane writes into Ray's folder only through new files it renames into place, and changes folders
there only through directory descriptors opened without following links: a job may plant anything in Ray's
folder, and no privileged call ever follows it or opens a name there. What the control plane itself writes
(the start log) lives next to Ray's folder, where only it may create names. Ray opens its temp, session,
sockets, logs and runtime-env folders to everyone (0777) whenever one of its processes starts; `tighten`
hands them to root with Ray's
group (0770), where Ray can still write but no longer chmod them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from raywarden.cluster.rayuser import RayUser
from raywarden.errors import ClusterError
from raywarden.files import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, ensure_private_dir, write_atomic
from raywarden.state import SEPARATED_RUNTIME_ROOT

# Ray's unix sockets end up at TEMP/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store: 64 bytes after
# the temp dir at most (7-digit pids), and AF_UNIX paths are limited to 107 bytes (ray/_private/utils.py).
SOCKET_SUFFIX_BYTES = 64
SOCKET_PATH_LIMIT = 107
# Folders Ray makes world-writable (ray/_common/utils.py try_make_directory_shared): at node start, in every
# worker process it starts (ray/_private/node.py _init_temp), and when runtime-env plugins start. Relative to a
# session folder; the temp dir and the session folders themselves too. Ray ignores a chmod it is not allowed
# to make, so these are handed to root (group: Ray's, 0770) once they exist, or made so before Ray makes them.
SESSION_SHARED = (
    "sockets",
    "logs",
    "logs/old",
    "logs/nsight",
    "logs/rocprof_sys",
    "runtime_resources",
    "runtime_resources/working_dir_files",
    "runtime_resources/py_modules_files",
    "runtime_resources/pip",
    "runtime_resources/uv",
    "runtime_resources/conda",
    "runtime_resources/java_jars_files",
)
SEALED_MODE = 0o770
# How deep Ray's world-writable folders can be under its temp dir (session_*/runtime_resources/pip).
SHARED_DEPTH = 3
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass(frozen=True)
class RayFiles:
    """Where Ray finds what it needs; passed to Ray through its environment and command line."""

    folder: Path
    node_cert: Path
    node_key: Path
    ca_cert: Path
    token: Path
    user: RayUser

    @property
    def temp_dir(self) -> Path:
        return self.folder / "tmp"

    @property
    def home(self) -> Path:
        """HOME of Ray and its jobs. With a user of its own, a folder of root's that Ray's user cannot write: pip,
        uv, conda, git and virtualenv read per-user config from HOME, and a job must not plant config that later
        installs (other people's) follow. Jobs' caches go to ``cache``."""
        return self.folder / "home" if self.user.is_current else self.folder.parent / "home"

    @property
    def cache(self) -> Path:
        """XDG_CACHE_HOME of Ray and its jobs (Ray's own); pip and uv are told to keep no cache."""
        return self.folder / "cache"

    @property
    def pip_config(self) -> Path:
        """PIP_CONFIG_FILE: an empty file of root's. While it exists pip reads no per-user config at all."""
        return self.folder.parent / "pip.conf"

    @property
    def start_log(self) -> Path:
        return start_log(self.folder)


def start_log(folder: Path) -> Path:
    """`ray start`'s output: the control plane's file, in the folder around Ray's (never in Ray's own, where a job
    could put a link in its place)."""
    return folder.parent / "ray-start.log"


def check_socket_room(temp_dir: Path) -> None:
    if len(str(temp_dir).encode()) + SOCKET_SUFFIX_BYTES > SOCKET_PATH_LIMIT:
        raise ClusterError(
            f"Ray's temp dir {temp_dir} is too long for Ray's unix socket paths (at most {SOCKET_PATH_LIMIT} bytes)",
            hint="use a shorter --state-dir path",
        )


def prepare(folder: Path, user: RayUser, *, cert: Path, key: Path, ca: Path, token: Path) -> RayFiles:
    """Create Ray's folder for ``user`` and give it copies of its credentials (a user of its own), or point
    Ray at the state dir's files (the control plane's own user)."""
    check_socket_room(folder / "tmp")
    if user.is_current:
        ensure_private_dir(folder.parent)
        ensure_private_dir(folder)
        for sub in ("tmp", "home"):
            ensure_private_dir(folder / sub)
        return RayFiles(folder, cert, key, ca, token, user)
    _public_dir(SEPARATED_RUNTIME_ROOT)
    _public_dir(folder.parent)
    _owned_dir(folder, user)
    files = RayFiles(
        folder, folder / "node.crt", folder / "node.key", folder / "internal-ca.crt", folder / "ray-token", user
    )
    owner = (user.uid, user.gid)
    _public_dir(files.home, mode=0o755)
    write_atomic(files.pip_config, b"# raywarden: Ray's pip reads no per-user config (cluster/raydir.py)\n", mode=0o644)
    write_atomic(files.node_cert, cert.read_bytes(), mode=PUBLIC_FILE_MODE, owner=owner)
    write_atomic(files.ca_cert, ca.read_bytes(), mode=PUBLIC_FILE_MODE, owner=owner)
    write_atomic(files.node_key, key.read_bytes(), mode=PRIVATE_FILE_MODE, owner=owner)
    write_atomic(files.token, token.read_bytes(), mode=PRIVATE_FILE_MODE, owner=owner)
    with _DirFd(os.open(folder, _DIR_FLAGS)) as top:
        _unlink_quietly(top.fd, "ray-start.log")  # where earlier releases kept the start log
        with _DirFd(_subdir(top.fd, "cache", user)) as cache:
            os.fchown(cache.fd, user.uid, user.gid)
            os.fchmod(cache.fd, 0o700)
        with _DirFd(_subdir(top.fd, "tmp", user)) as temp:
            _seal(temp.fd, user)
    return files


def forget_secrets(folder: Path) -> None:
    """After Ray stopped: remove the copies of its key and token (`up` writes them again)."""
    for name in ("node.key", "ray-token"):
        try:
            os.unlink(folder / name)  # unlink never follows a link
        except FileNotFoundError:
            pass


def forget_cluster_address(files: RayFiles) -> None:
    """After Ray stopped: remove the record of its GCS address that `ray start` leaves in its temp dir, as
    `ray stop` does. Ray refuses to start a head again at a recorded address while any local process names
    that GCS (a worker node's, still connected), so a restart on the same ports needs it gone."""
    with _DirFd(os.open(files.folder, _DIR_FLAGS)) as top, _DirFd(_subdir(top.fd, "tmp", files.user)) as temp:
        try:
            os.unlink("ray_current_cluster", dir_fd=temp.fd)  # never follows a link
        except FileNotFoundError:
            pass


def tighten(files: RayFiles) -> None:
    """Once Ray made its session: the folders Ray opens to everyone (0777) are handed to root with Ray's group
    and mode 0770, so that Ray can still write in them, nobody else can enter them, and Ray's later chmods fail
    (Ray ignores that). The ones runtime-env plugins make later are made now, the same way.

    Works through directory descriptors, never following a link: the tree is the Ray user's, and a job may
    have planted anything in it. Without a user of its own (shared), Ray keeps reopening them; the 0700
    folder around them is what keeps others out."""
    if files.user.is_current:
        return
    with _DirFd(os.open(files.folder, _DIR_FLAGS)) as top, _DirFd(_subdir(top.fd, "tmp", files.user)) as temp:
        _seal(temp.fd, files.user)
        for entry in os.scandir(temp.fd):
            if entry.name.startswith("session_") and entry.is_dir(follow_symlinks=False):
                with _DirFd(_subdir(temp.fd, entry.name, files.user)) as session:
                    _seal(session.fd, files.user)
                    for relative in SESSION_SHARED:
                        _seal_path(session.fd, relative, files.user)


def shared_folders(temp_dir: Path) -> list[Path]:
    """Folders under Ray's temp dir (down to where Ray makes them 0777) that others may write to."""
    try:
        top = os.lstat(temp_dir)
    except OSError:
        return []
    if not stat.S_ISDIR(top.st_mode):
        return [temp_dir] if stat.S_ISLNK(top.st_mode) else []  # a link planted in place of the temp dir
    found = []
    base = len(temp_dir.parts)
    for folder, dirs, _ in os.walk(temp_dir):
        if len(Path(folder).parts) - base >= SHARED_DEPTH:
            dirs[:] = []
        try:
            st = os.lstat(folder)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002:
            found.append(Path(folder))
    return found


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)  # unlink never follows a link
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass


class _DirFd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> _DirFd:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _subdir(parent_fd: int, name: str, user: RayUser) -> int:
    """Open (creating it 0700 if missing) the folder ``name`` in ``parent_fd``, never through a link."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise ClusterError(
            f"{name} in Ray's folder is not a folder ({exc.strerror})",
            hint=f"remove it, or `raywarden down` and remove Ray's folder; it belongs to {user.name}",
        ) from None


def _seal(fd: int, user: RayUser) -> None:
    st = os.fstat(fd)
    # Only what is Ray's own (or sealed already) changes hands: never a folder of somebody else's.
    if st.st_uid not in (user.uid, 0):
        return
    os.fchown(fd, 0, user.gid)
    os.fchmod(fd, SEALED_MODE)


def _seal_path(base_fd: int, relative: str, user: RayUser) -> None:
    fds = [base_fd]
    try:
        for part in relative.split("/"):
            fds.append(_subdir(fds[-1], part, user))
        _seal(fds[-1], user)
    finally:
        for fd in fds[1:]:
            os.close(fd)


def _public_dir(path: Path, mode: int = 0o711) -> None:
    """A folder of root's that others may enter but not list (the way to Ray's folder), or read (``mode``)."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ClusterError(
                f"{path} belongs to uid {st.st_uid}, not to the control plane's user",
                hint=f"remove it (rm -r {path}); `up` creates it again",
            )
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _owned_dir(path: Path, user: RayUser) -> None:
    """Ray's folder: made by us in a folder only we can change, then handed to Ray's user (never via a link)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ClusterError(f"{path} is not a folder ({exc.strerror})", hint=f"remove it (rm {path})") from None
    try:
        os.fchown(fd, user.uid, user.gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
