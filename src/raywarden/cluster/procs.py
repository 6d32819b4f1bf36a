"""Process bookkeeping on Linux via /proc: find, signal and wait for the processes of one cluster.

``ray stop`` kills every Ray process on the host; two clusters on one host must not touch each other,
so we track our own processes: the ones whose command line names this cluster's Ray temp dir.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from raywarden.errors import ClusterError

# Popen objects of processes started by `spawn_as`, kept so that none is garbage-collected (which warns)
# while its process runs; `exit_status` reaps through them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn_detached(argv: list[str], *, env: dict[str, str], log_path: Path, cwd: Path | None = None) -> int:
    """Start a long-lived process in a session of its own (so signals to the CLI never reach it), with
    stdin from /dev/null and stdout/stderr appended to ``log_path``. It outlives the CLI that started it."""
    log_fd = open_log(log_path)
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ]
        if cwd is not None:
            # posix_spawn has no chdir action before Python 3.13; run through `env -C`.
            argv = ["/usr/bin/env", "-C", str(cwd), *argv]
        return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
    finally:
        os.close(log_fd)


def spawn_as(
    argv: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    cwd: Path,
    uid: int | None,
    gid: int | None,
    umask: int = 0o077,
) -> int:
    """As ``spawn_detached``, as the user ``uid``/``gid`` (None: ours) with no supplementary groups and
    ``umask``. ``log_path`` stays ours (``open_log``): the process writes to it through the descriptor it
    inherits, and never gets the file itself."""
    log_fd = open_log(log_path)
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
            umask=umask,
            user=uid,
            group=gid,
            extra_groups=None if uid is None else [],
        )
    finally:
        os.close(log_fd)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def open_log(path: Path) -> int:
    """Open a log of ours for appending: never through a link, and only a regular file we own. Its folder must
    be one no other user may write (a name there is then ours), but a link or a file handed to us is refused
    whatever the folder."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ClusterError(
            f"cannot open the log {path} ({exc.strerror})", hint=f"remove {path} if it is a link; it is made again"
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        raise ClusterError(
            f"the log {path} is not a file of ours (uid {st.st_uid}, {st.st_nlink} links)",
            hint=f"remove {path}; it is made again",
        )
    return fd


def exit_status(pid: int) -> int | None:
    """The exit code of a child that has ended (reaping it), or None while it runs."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        code = proc.poll()
        if code is not None:
            del _CHILDREN[pid]
        return code
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if alive(pid) else -1
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def pids_in_session(sid: int) -> list[int]:
    """Every live process of session ``sid``: `ray start --block` leads its own session and Ray's daemons
    and workers stay in it, even after they rename themselves (``ray::DashboardAgent``)."""
    me = os.getpid()
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and int(e.name) != me and session_of(int(e.name)) == sid and alive(int(e.name))
    ]


def pids_mentioning(marker: str) -> list[int]:
    """Every live process whose command line contains ``marker`` (a path unique to one cluster)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and marker in cmdline(int(entry.name)):
            found.append(int(entry.name))
    return found


def terminate(pids: list[int], *, grace_s: float) -> list[int]:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL what is left. Returns the pids that needed SIGKILL."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    killed = [p for p in pids if alive(p)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in killed):
        time.sleep(0.05)
    for pid in pids:
        if pid in _CHILDREN:
            exit_status(pid)  # reap a child of ours, so that it is no zombie and its Popen is done
    return killed


def tcp_listeners() -> dict[int, tuple[str, str]]:
    """Every TCP socket in LISTEN state on this host: port -> (bound address, socket inode)."""
    found: dict[int, tuple[str, str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # 0A = TCP_LISTEN
                    continue
                hex_addr, hex_port = fields[1].rsplit(":", 1)
                found[int(hex_port, 16)] = (_decode_addr(hex_addr), fields[9])
    return found


def listening_ports(pids: set[int]) -> dict[int, str]:
    """TCP ports in LISTEN state owned by any of ``pids``, with the address each is bound to."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    return {port: addr for port, (addr, inode) in tcp_listeners().items() if inode in inodes}


def is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)  # gRPC listeners show as ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _decode_addr(hex_addr: str) -> str:
    """/proc/net/tcp* print addresses as host-order 32-bit words in hex."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    return str(ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))
