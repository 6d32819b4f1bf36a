"""Run by a developer's job: try to read, list, create and append what belongs to the control plane.

Standalone (standard library only: it runs in the job's environment). It reads ``targets.json`` next to it
and prints one line per attempt: ``ACTION PATH: RESULT``. It never writes a byte into an existing file: an
append attempt only opens the file for appending, and a file it manages to create is removed at once.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path


def _denied(exc: OSError) -> str:
    return f"DENIED ({type(exc).__name__}: errno {exc.errno})"


def try_read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(4096)
    except OSError as exc:
        return _denied(exc)
    return f"READ {len(data)} bytes"


def try_list(path: str) -> str:
    try:
        names = os.listdir(path)
    except OSError as exc:
        return _denied(exc)
    return f"LISTED {len(names)} entries"


def try_create(folder: str) -> str:
    target = os.path.join(folder, f".probe-{secrets.token_hex(4)}")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return _denied(exc)
    os.close(fd)
    os.unlink(target)
    return "CREATED a file (removed again)"


def try_append(path: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        return _denied(exc)
    os.close(fd)
    return "OPENED for appending (nothing written)"


def try_mem(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        # EIO at offset 0 (nothing mapped there) means the open itself succeeded: memory is reachable.
        if exc.errno == 5:
            return "OPENED (memory readable at mapped addresses)"
        return _denied(exc)
    return "READ"


def main() -> int:
    targets = json.loads(Path(__file__).with_name("targets.json").read_text())
    print(f"PROBE uid={os.getuid()} euid={os.geteuid()} gid={os.getgid()} groups={sorted(os.getgroups())}")
    for path in targets["list"]:
        print(f"PROBE list   {path}: {try_list(path)}")
    for path in targets["read"]:
        print(f"PROBE read   {path}: {try_read(path)}")
    for path in targets["create_in"]:
        print(f"PROBE create {path}/: {try_create(path)}")
    for path in targets["append"]:
        print(f"PROBE append {path}: {try_append(path)}")
    for key in sorted(os.environ):
        print(f"PROBE env    {key}={os.environ[key]}")
    for pid in targets["proc"]:
        for entry in ("environ", "maps", "cmdline", "status"):
            print(f"PROBE read   /proc/{pid}/{entry}: {try_read(f'/proc/{pid}/{entry}')}")
        print(f"PROBE list   /proc/{pid}/fd: {try_list(f'/proc/{pid}/fd')}")
        print(f"PROBE read   /proc/{pid}/mem: {try_mem(f'/proc/{pid}/mem')}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
