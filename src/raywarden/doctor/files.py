"""File and folder permissions: keys and the Ray token 0600, folders 0700, everything owned by us."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

from raywarden.doctor.context import DoctorContext
from raywarden.doctor.report import Check, command, failed, passed, warned

# Readable by anyone by design: certificates and the audit public key.
PUBLIC_SUFFIXES = (".crt", ".pub")


def checks(ctx: DoctorContext) -> list[Check]:
    state = ctx.state
    entries = list(_walk(state.root))
    keys = [state.access_ca_key, state.internal_ca_key, state.gateway_key, state.node_key, state.audit_key]
    keys += [p for p, st in entries if p.suffix == ".key" and stat.S_ISREG(st.st_mode) and p not in keys]
    special = {*keys, state.ray_token}
    return [
        _private_files("files.keys", "private keys", keys),
        _private_files("files.ray-token", "Ray's token", [state.ray_token]),
        _folders(ctx, entries),
        _ray_temp(ctx),
        _other_files(entries, special),
        _ownership(ctx, entries),
        *[_profile(p.name, p.folder, p.key_path) for p in ctx.local_profiles()],
    ]


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under ``root`` (itself included), by lstat: a symlink is reported, never followed."""
    yield root, root.lstat()
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            try:
                yield path, path.lstat()
            except FileNotFoundError:  # removed while we walked (a temp file of an atomic write)
                continue


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode)


def _private_files(check_id: str, what: str, paths: list[Path]) -> Check:
    missing, loose, links = [], [], []
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            missing.append(path)
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            links.append(path)
        elif _mode(st) & 0o077:
            loose.append((path, _mode(st)))
    if loose:
        listing = ", ".join(f"{p} ({m:04o})" for p, m in loose)
        return failed(
            check_id,
            f"{what} readable or writable by other users: {listing}",
            command("chmod", "600", *[p for p, _ in loose]),
            paths=[str(p) for p, _ in loose],
        )
    if links:
        return failed(
            check_id,
            f"{what} are not regular files: {', '.join(map(str, links))}",
            "replace each with the regular file it points to (mode 0600)",
            paths=[str(p) for p in links],
        )
    if missing:
        return failed(
            check_id,
            f"{what} missing: {', '.join(map(str, missing))}",
            "restore them from a backup of the state dir; without them the cluster cannot start",
            paths=[str(p) for p in missing],
        )
    return passed(check_id, f"{len(paths)} files are 0600" if len(paths) > 1 else f"{paths[0].name} is 0600")


def _folders(ctx: DoctorContext, entries: list[tuple[Path, os.stat_result]]) -> Check:
    folders = [(p, st) for p, st in entries if stat.S_ISDIR(st.st_mode)]
    loose = [(p, _mode(st)) for p, st in folders if _mode(st) & 0o077]
    if loose:
        listing = ", ".join(f"{p} ({m:04o})" for p, m in loose)
        return failed(
            "files.folders",
            f"folders open to other users: {listing}",
            command("chmod", "700", *[p for p, _ in loose]),
            paths=[str(p) for p, _ in loose],
        )
    return passed("files.folders", f"{len(folders)} folders in the state dir are 0700")


def _ray_temp(ctx: DoctorContext) -> Check:
    """Ray makes its temp dir, sessions, sockets and logs 0777 (ray/_common/utils.py
    try_make_directory_shared): another user could swap a unix socket or a job's unpacked working_dir.
    Some folder on the way there must be closed to everyone else: Ray's own (a user of its own, checked by
    separation.ray-folder), or ours (Ray shares our user)."""
    temp = ctx.state.ray_temp_dir
    if not temp.exists():
        return passed("files.ray-temp", f"Ray's temp dir {temp} does not exist yet")
    if ctx.config.separated:
        owner = ctx.config.ray_user
        try:
            uid = pwd.getpwnam(owner or "").pw_uid
        except KeyError:
            uid = -1
        folder = ctx.state.ray_dir
        st = folder.lstat()
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not _mode(st) & 0o077:
            return passed("files.ray-temp", f"Ray's temp dir is inside {folder} (0700, {owner}'s)")
        return failed(
            "files.ray-temp",
            f"other users can reach Ray's temp dir {temp}: {folder} is not a 0700 folder of {owner}'s",
            command("chown", f"{owner}:", folder) + " && " + command("chmod", "700", folder),
            path=str(temp),
        )
    me = os.geteuid()
    for folder in (temp, *temp.parents):
        st = folder.lstat()
        if st.st_uid == me and not _mode(st) & 0o077 and stat.S_ISDIR(st.st_mode):
            return passed("files.ray-temp", f"Ray's temp dir is inside {folder} (0700, yours)")
    return failed(
        "files.ray-temp",
        f"other users can reach Ray's temp dir {temp}: Ray makes it and its sockets and session folders 0777",
        command("chmod", "700", _temp_guard(ctx)),
        path=str(temp),
    )


def _temp_guard(ctx: DoctorContext) -> Path:
    """The folder of ours around Ray's folder and Prometheus's data (state.py runtime_dir)."""
    return ctx.state.runtime_dir


def _other_files(entries: list[tuple[Path, os.stat_result]], special: set[Path]) -> Check:
    """Config, identity store, audit log, run state and logs are private; certificates may be public
    but never writable by others."""
    loose_private, writable_public = [], []
    for path, st in entries:
        if path in special or stat.S_ISDIR(st.st_mode):
            continue
        if path.suffix in PUBLIC_SUFFIXES:
            if _mode(st) & 0o022:
                writable_public.append(path)
        elif _mode(st) & 0o077:
            loose_private.append(path)
    if loose_private or writable_public:
        fixes = []
        if loose_private:
            fixes.append(command("chmod", "600", *loose_private))
        if writable_public:
            fixes.append(command("chmod", "644", *writable_public))
        shown = [*loose_private, *writable_public]
        return failed(
            "files.state",
            f"files open to other users: {', '.join(map(str, shown))}",
            " && ".join(fixes),
            paths=[str(p) for p in shown],
        )
    return passed(
        "files.state",
        "configuration, identity store, audit log and logs are 0600; certificates are not writable by others",
    )


def _ownership(ctx: DoctorContext, entries: list[tuple[Path, os.stat_result]]) -> Check:
    me = os.geteuid()
    foreign = [p for p, st in entries if st.st_uid != me]
    temp = _temp_guard(ctx)
    if temp.exists() and temp.lstat().st_uid != me:
        foreign.append(temp)
    if foreign:
        user = _user_name(me)
        return failed(
            "files.owner",
            f"not owned by {user}: {', '.join(map(str, foreign[:10]))}"
            + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""),
            command("chown", "-R", user, ctx.state.root)
            + (f" (and remove {temp}: another user created it)" if temp in foreign else ""),
            paths=[str(p) for p in foreign],
        )
    return passed("files.owner", f"everything is owned by {_user_name(me)}")


def _profile(name: str, folder: Path, key: Path) -> Check:
    check_id = f"files.profile.{name}"
    problems, fixes = [], []
    try:
        if _mode(folder.lstat()) & 0o077:
            problems.append(f"{folder} is {_mode(folder.lstat()):04o}")
            fixes.append(command("chmod", "700", folder))
        if _mode(key.lstat()) & 0o077:
            problems.append(f"{key} is {_mode(key.lstat()):04o}")
            fixes.append(command("chmod", "600", key))
    except FileNotFoundError as exc:
        return warned(
            check_id,
            f"profile {name!r} is incomplete: {exc.filename} is missing",
            "re-create the profile (for the admin profile: restore it from backup)",
        )
    if problems:
        return failed(check_id, f"profile {name!r}: {'; '.join(problems)}", " && ".join(fixes))
    return passed(check_id, f"profile {name!r}: folder 0700, client key 0600")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
