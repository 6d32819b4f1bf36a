"""`login`, `logout`, `whoami`, `token` and `profile list|use|rename|delete`: identities on this machine.

Several people may share one machine (and one $RAYWARDEN_HOME): a login never replaces someone else's
profile silently, and every command says which identity it acts as.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.cli.common import (
    FIRST_JOB,
    JsonOption,
    ProfileOption,
    WideOption,
    console,
    err_console,
    print_json,
    print_next,
    print_rows,
)
from raywarden.errors import RaywardenError

profile_app = typer.Typer(
    help="Client profiles on this machine: list, use, rename, delete (one per identity and cluster).",
    no_args_is_help=True,
)
ProfileArg = Annotated[str, typer.Argument(metavar="NAME", help="Profile name, as `raywarden profile list` shows.")]


def register(app: typer.Typer) -> None:
    app.add_typer(profile_app, name="profile")
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
    app.command("token")(token)


def login(
    url: Annotated[str, typer.Argument(help="The gateway, e.g. https://gateway.example:8443.")],
    code: Annotated[str, typer.Option("--code", help="One-time enrollment code from your administrator.")],
    ca_fingerprint: Annotated[
        str,
        typer.Option(
            "--ca-fingerprint", help="SHA-256 of the cluster's access CA, from your administrator (pins first contact)."
        ),
    ],
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            help="Name of the profile to create. Default: the cluster's trust domain, or TRUST_DOMAIN-NAME when "
            "another identity already has that profile.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing profile of that name (its key is deleted).")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Enroll this machine: generates your key here, sends only a CSR and the code, stores the profile.

    A profile that holds another identity is never replaced without --force: the login takes another name
    (or, with an explicit --profile, is refused before the one-time code is used).
    """
    from raywarden.client.enroll import login as do_login

    result = do_login(url, code, ca_fingerprint, profile_name=profile, force=force)
    created = result.profile
    cert = created.certificate()
    info: dict[str, Any] = {
        "profile": created.name,
        "identity": created.identity,
        "gateway_url": created.gateway_url,
        "not_after": cert.not_valid_after_utc.isoformat(),
        "folder": str(created.folder),
        "replaced": result.replaced.identity if result.replaced else None,
        "kept": result.kept.name if result.kept else None,
    }
    if json_output:
        print_json(info)
        return
    console.print(f"Logged in as {created.identity} (profile '{created.name}', now current).", markup=False)
    console.print(f"  certificate valid until {info['not_after']}; renewed automatically by later commands.")
    if result.replaced is not None:
        console.print(f"  replaced the earlier profile '{created.name}' of {result.replaced.identity}.", markup=False)
    if result.kept is not None:
        console.print(
            f"  profile '{result.kept.name}' ({result.kept.identity}) is unchanged; "
            f"switch back with `raywarden profile use {result.kept.name}`.",
            markup=False,
        )
    print_next(["raywarden", "job", "submit", "--", *FIRST_JOB])


def logout(profile: ProfileOption = None, json_output: JsonOption = False) -> None:
    """Revoke a profile's certificate and token at the gateway, and delete them from this machine.

    The profile defaults to the current one. When the gateway cannot revoke them and the cluster's state is on
    this machine, they are revoked there; otherwise the output says until when the gateway still accepts the
    certificate, and how an administrator revokes it.
    """
    from raywarden.client.identity import logout as do_logout
    from raywarden.client.profile import load_profile

    done = do_logout(load_profile(profile))
    if json_output:
        print_json(done.to_dict())
        return
    console.print(f"Logged out {done.profile.identity}: profile '{done.profile.name}' deleted.", markup=False)
    if done.note:
        console.print(f"  {done.note}", markup=False)
    if done.was_current:
        _after_current_removed()


def _after_current_removed() -> None:
    from raywarden.client.profile import profile_names

    left = profile_names()
    if left:
        console.print(f"  no profile is current now; remaining: {', '.join(left)} (`raywarden profile use NAME`).")
    else:
        console.print("  no profiles left on this machine.")


def whoami(
    profile: ProfileOption = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not ask the gateway whether it accepts you.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Who you are: identity, groups, certificate expiry and gateway (and whether the gateway accepts you)."""
    import os

    from raywarden.client.identity import remaining_seconds
    from raywarden.client.identity import whoami as do_whoami
    from raywarden.client.profile import current_profile_name, load_profile

    chosen = load_profile(profile)
    current = chosen.name == (os.environ.get("RAYWARDEN_PROFILE") or current_profile_name())
    me = do_whoami(chosen, current=current, check=not offline)
    if json_output:
        print_json(me.to_dict())
        return
    left = remaining_seconds(me.not_after)
    expiry = f"{me.not_after:%Y-%m-%d %H:%M:%S} UTC " + (
        f"({_duration(left)} left)" if left > 0 else "[bold red](expired)[/]"
    )
    if me.groups is None:
        groups = "[dim]not known (the gateway did not say; the head's `raywarden user show NAME` lists them)[/]"
    else:
        groups = escape(", ".join(me.groups) or "(none)") + (" [bold red](disabled)[/]" if me.disabled else "")
    source = "current profile" if me.current else "not the current profile"
    console.print(f"identity     {escape(me.profile.identity)}")
    console.print(f"profile      {escape(me.profile.name)} ({source})")
    console.print(f"groups       {groups}")
    console.print(f"certificate  serial {me.serial}, valid until {expiry}")
    console.print(f"gateway      {escape(me.profile.gateway_url)}: {escape(me.gateway_check)}")


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    if hours >= 48:
        return f"{hours // 24}d {hours % 24}h"
    return f"{hours}h {rest // 60:02d}m"


def token(
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="Lifetime, e.g. 15m (default 15m, capped by the cluster's token_max_minutes)."),
    ] = None,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Print a short-lived bearer token for tools that cannot do mutual TLS (e.g. `ray job submit --headers`).

    Only the token goes to stdout, so that `$(raywarden token)` works; --json adds its id and expiry. The token
    ends no later than the profile's certificate, and revoking that certificate revokes the token too.
    """
    from raywarden.client.enroll import request_token
    from raywarden.client.profile import load_profile
    from raywarden.client.renew import ensure_fresh
    from raywarden.gateway.tokens import parse_ttl

    chosen = load_profile(profile)
    ensure_fresh(chosen)
    answer = request_token(chosen, None if ttl is None else parse_ttl(ttl))
    if answer.get("capped_by_certificate"):
        err_console.print(
            f"note: the token expires at {answer.get('expires_at')}, with the certificate it was issued with "
            f"({answer.get('cert_serial')}); renew the certificate (`raywarden login` again) for a longer one",
            markup=False,
        )
    if json_output:
        print_json(answer)
    else:
        typer.echo(answer["token"])


@profile_app.command("list")
def profile_list(wide: WideOption = False, json_output: JsonOption = False) -> None:
    """Profiles on this machine; the current one is marked with *."""
    from raywarden.client.profile import current_profile_name, load_profile, profile_names

    current = current_profile_name()
    rows = []
    for name in profile_names():
        try:
            p = load_profile(name)
            row: dict[str, Any] = {
                "name": p.name,
                "identity": p.identity,
                "gateway_url": p.gateway_url,
                "current": p.name == current,
                "local_admin": p.state_dir is not None,
                "certificate_not_after": None,
                "problem": None,
            }
            row["certificate_not_after"] = p.certificate().not_valid_after_utc.isoformat()
        except (RaywardenError, OSError, ValueError) as exc:  # a damaged profile is listed, not fatal
            row = {"name": name, "identity": None, "gateway_url": None, "current": name == current}
            row.update(local_admin=False, certificate_not_after=None, problem=str(exc))
        rows.append(row)
    if json_output:
        print_json(rows)
        return
    if not rows:
        err_console.print("No profiles yet: `raywarden login URL --code CODE --ca-fingerprint SHA256`.")
        return
    lines = [
        [
            "*" if row["current"] else "",
            escape(row["name"]),
            escape(row["identity"] or f"damaged: {row['problem']}"),
            escape(row["gateway_url"] or ""),
            (row["certificate_not_after"] or "")[:16].replace("T", " "),
        ]
        for row in rows
    ]
    print_rows(("", "profile", "identity", "gateway", "expires"), lines, wide=wide)


@profile_app.command("use")
def profile_use(name: ProfileArg, json_output: JsonOption = False) -> None:
    """Make a profile the current one (RAYWARDEN_PROFILE or --profile still take precedence)."""
    from raywarden.client.profile import load_profile, set_current

    chosen = load_profile(name)
    set_current(chosen.name)
    if json_output:
        print_json({"current": chosen.name, "identity": chosen.identity})
    else:
        console.print(f"Current profile: {chosen.name} ({chosen.identity})", markup=False)


@profile_app.command("rename")
def profile_rename(
    old: Annotated[str, typer.Argument(metavar="OLD", help="The profile's name now.")],
    new: Annotated[str, typer.Argument(metavar="NEW", help="Its new name (refused if taken).")],
    json_output: JsonOption = False,
) -> None:
    """Rename a profile (it stays current if it was)."""
    from raywarden.client.profile import rename_profile

    renamed = rename_profile(old, new)
    if json_output:
        print_json({"old": old, "new": renamed.name, "identity": renamed.identity})
    else:
        console.print(f"Renamed profile '{old}' to '{renamed.name}' ({renamed.identity}).", markup=False)


@profile_app.command("delete")
def profile_delete(name: ProfileArg, json_output: JsonOption = False) -> None:
    """Delete a profile: the same as `raywarden logout --profile NAME` (a damaged profile is removed as is)."""
    import shutil

    from raywarden.client.profile import clear_current, current_profile_name, load_profile, profile_names, profiles_dir

    try:
        load_profile(name)
    except RaywardenError:
        if name not in profile_names():
            raise
        shutil.rmtree(profiles_dir() / name)
        if current_profile_name() == name:
            clear_current()
        if json_output:
            print_json({"profile": name, "deleted": True, "damaged": True})
        else:
            console.print(f"Deleted the damaged profile '{name}'.", markup=False)
        return
    logout(profile=name, json_output=json_output)
