"""`user`, `sa`, `revoke` (administration on the head host) and `login`, `profile`, `token` (any machine)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from raywarden.cli.common import JsonOption, StateDirOption, console, err_console, print_json, state_dir
from raywarden.errors import RaywardenError
from raywarden.gateway.tokens import expires_iso, parse_ttl
from raywarden.identity.admin import IdentityAdmin, Kind, NewCode
from raywarden.identity.store import Principal

user_app = typer.Typer(
    help="People: add, list, show, disable, enable, change groups (on the head host).", no_args_is_help=True
)
sa_app = typer.Typer(
    help="Service accounts for automation: add, list, show, token, disable, enable.", no_args_is_help=True
)
profile_app = typer.Typer(help="Client profiles on this machine (one per cluster and identity).", no_args_is_help=True)
revoke_app = typer.Typer(
    help="Revoke one certificate or bearer token at once (on the head host).", no_args_is_help=True
)

GroupOption = Annotated[list[str] | None, typer.Option("--group", "-g", help="Group to join (repeatable).")]
CodeTtlOption = Annotated[
    str | None,
    typer.Option(
        "--code-ttl", help="Lifetime of the one-time enrollment code, e.g. 24h, 30m (default: 24h from the config)."
    ),
]
NameArg = Annotated[str, typer.Argument(help="Name (1-63 lowercase letters, digits, '.', '-' or '_').")]
ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", help="Client profile to use (default: $RAYWARDEN_PROFILE or the current profile)."),
]


def register(app: typer.Typer) -> None:
    for kind, sub in (("user", user_app), ("sa", sa_app)):
        _principal_commands(sub, kind)  # type: ignore[arg-type]
    app.add_typer(user_app, name="user")
    app.add_typer(sa_app, name="sa")
    app.add_typer(profile_app, name="profile")
    app.add_typer(revoke_app, name="revoke")
    app.command("login")(login)
    app.command("token")(token)


def _ttl(text: str | None) -> float | None:
    return None if text is None else parse_ttl(text)


def _principal_commands(sub: typer.Typer, kind: Kind) -> None:
    what = "user" if kind == "user" else "service account"

    @sub.command("add")
    def add(
        name: NameArg,
        group: GroupOption = None,
        code_ttl: CodeTtlOption = None,
        state: StateDirOption = None,
        json_output: JsonOption = False,
    ) -> None:
        """Create it and print a one-time enrollment code for `raywarden login` (shown only now)."""
        admin = IdentityAdmin(state_dir(state))
        _print_code(
            admin, admin.add(kind, name, list(group or []), code_ttl_s=_ttl(code_ttl)), json_output, created=True
        )

    @sub.command("list")
    def list_(state: StateDirOption = None, json_output: JsonOption = False) -> None:
        """List them with their groups and status."""
        admin = IdentityAdmin(state_dir(state))
        rows = [_row(p) for p in admin.store.list_principals(kind)]
        if json_output:
            print_json(rows)
            return
        from rich.table import Table

        table = Table("name", "groups", "status", "spiffe id")
        for row in rows:
            table.add_row(
                row["name"], ", ".join(row["groups"]), "disabled" if row["disabled"] else "active", row["spiffe_id"]
            )
        console.print(table)

    @sub.command("show")
    def show(name: NameArg, state: StateDirOption = None, json_output: JsonOption = False) -> None:
        """Groups, status, certificates (serials), bearer tokens (ids) and enrollment codes."""
        admin = IdentityAdmin(state_dir(state))
        info = admin.describe(admin.get(kind, name))
        if json_output:
            print_json(info)
            return
        console.print(f"{info['spiffe_id']}  ({'disabled' if info['disabled'] else 'active'})", markup=False)
        console.print(f"  groups: {', '.join(info['groups']) or '-'}", markup=False)
        for cert in info["certificates"]:
            state_text = f"revoked {cert['revoked_at']}" if cert["revoked_at"] else f"valid until {cert['not_after']}"
            console.print(f"  certificate {cert['serial']}  {state_text}", markup=False)
        for tok in info["tokens"]:
            state_text = f"revoked {tok['revoked_at']}" if tok["revoked_at"] else f"expires {tok['expires_at']}"
            console.print(f"  token {tok['jti']}  {state_text}", markup=False)
        for code in info["enrollments"]:
            state_text = (
                ("used " + str(code["used_at"]))
                if code["used_at"]
                else ("revoked" if code["revoked_at"] else f"expires {code['expires_at']}")
            )
            console.print(f"  enrollment {code['enrollment_id']}  {state_text}", markup=False)

    @sub.command("disable")
    def disable(name: NameArg, state: StateDirOption = None, json_output: JsonOption = False) -> None:
        """Disable it and revoke every certificate, token and enrollment code it holds (effective at once)."""
        counts = IdentityAdmin(state_dir(state)).disable(kind, name)
        if json_output:
            print_json({"name": name, "disabled": True, "revoked": counts})
        else:
            console.print(
                f"Disabled {what} {name}; revoked {counts['certificates']} certificate(s), "
                f"{counts['tokens']} token(s), {counts['enrollment_codes']} enrollment code(s)."
            )

    @sub.command("enable")
    def enable(
        name: NameArg, code_ttl: CodeTtlOption = None, state: StateDirOption = None, json_output: JsonOption = False
    ) -> None:
        """Enable it again and print a fresh enrollment code (its old credentials stay revoked)."""
        admin = IdentityAdmin(state_dir(state))
        _print_code(admin, admin.enable(kind, name, code_ttl_s=_ttl(code_ttl)), json_output, created=False)

    @sub.command("code")
    def code(
        name: NameArg, code_ttl: CodeTtlOption = None, state: StateDirOption = None, json_output: JsonOption = False
    ) -> None:
        """Print a new one-time enrollment code (e.g. for a new machine or after the old code expired)."""
        admin = IdentityAdmin(state_dir(state))
        _print_code(admin, admin.new_code(kind, name, code_ttl_s=_ttl(code_ttl)), json_output, created=False)

    @sub.command("groups")
    def groups(
        name: NameArg,
        add: Annotated[list[str] | None, typer.Option("--add", help="Group to join (repeatable).")] = None,
        remove: Annotated[list[str] | None, typer.Option("--remove", help="Group to leave (repeatable).")] = None,
        state: StateDirOption = None,
        json_output: JsonOption = False,
    ) -> None:
        """Show or change group membership (takes effect on the next request)."""
        admin = IdentityAdmin(state_dir(state))
        principal = (
            admin.change_groups(kind, name, list(add or []), list(remove or []))
            if add or remove
            else admin.get(kind, name)
        )
        if json_output:
            print_json(_row(principal))
        else:
            console.print(f"{principal.name}: {', '.join(principal.groups) or '(no groups)'}", markup=False)

    if kind == "sa":

        @sub.command("token")
        def sa_token(
            name: NameArg,
            ttl: Annotated[
                str, typer.Option("--ttl", help="Lifetime, e.g. 15m, 1h (at most token_max_minutes).")
            ] = "1h",
            state: StateDirOption = None,
            json_output: JsonOption = False,
        ) -> None:
            """Issue a bearer token for automation. Prints only the token (use --json for its id and expiry)."""
            issued = IdentityAdmin(state_dir(state)).sa_token(name, parse_ttl(ttl))
            _print_token(
                {
                    "token": issued.token.reveal(),
                    "jti": issued.jti,
                    "expires_at": expires_iso(issued.expires_at),
                    "token_type": "Bearer",
                },
                json_output,
            )


def _row(principal: Principal) -> dict[str, Any]:
    return {
        "name": principal.name,
        "kind": principal.kind,
        "spiffe_id": principal.spiffe_id,
        "groups": list(principal.groups),
        "disabled": principal.disabled,
    }


def _print_code(admin: IdentityAdmin, new: NewCode, json_output: bool, *, created: bool) -> None:
    from raywarden.cluster.setup import gateway_url
    from raywarden.pki.certs import fingerprint, load_cert

    url = gateway_url(admin.config)
    fp = fingerprint(load_cert(admin.state.access_ca_cert))
    code = new.code.reveal()
    command = f"raywarden login {url} --code {code} --ca-fingerprint {fp}"
    if json_output:
        print_json(
            {
                **_row(new.principal),
                "code": code,
                "enrollment_id": new.code.code_id,
                "expires_at": expires_iso(new.expires_at),
                "gateway_url": url,
                "ca_fingerprint": fp,
                "login_command": command,
            }
        )
        return
    p = new.principal
    if created:
        console.print(f"Created {p.spiffe_id} (groups: {', '.join(p.groups) or 'none'}).", markup=False)
    console.print(f"One-time enrollment code, valid until {expires_iso(new.expires_at)} (shown only now):")
    console.print(f"  {code}", markup=False, soft_wrap=True)
    console.print(f"On {p.name}'s machine (use the gateway address reachable from there):")
    console.print(f"  {command}", markup=False, soft_wrap=True)


def _print_token(answer: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(answer)
    else:
        # Only the token on stdout, so that `$(raywarden token)` works.
        typer.echo(answer["token"])


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
        typer.Option("--profile", help="Name of the profile to create (default: the cluster's trust domain)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a profile of that name for another gateway.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Enroll this machine: generates your key here, sends only a CSR and the code, stores the profile."""
    from raywarden.client.enroll import login as do_login

    created = do_login(url, code, ca_fingerprint, profile_name=profile, force=force)
    cert = created.certificate()
    info = {
        "profile": created.name,
        "identity": created.identity,
        "gateway_url": created.gateway_url,
        "not_after": cert.not_valid_after_utc.isoformat(),
        "folder": str(created.folder),
    }
    if json_output:
        print_json(info)
        return
    console.print(f"Logged in as {created.identity} (profile '{created.name}', now current).", markup=False)
    console.print(f"  certificate valid until {info['not_after']}; renewed automatically by later commands.")
    console.print("Next: `raywarden job submit -- python -c \"print('hello')\"`")


def token(
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="Lifetime, e.g. 15m (default 15m, capped by the cluster's token_max_minutes)."),
    ] = None,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Print a short-lived bearer token for tools that cannot do mutual TLS (e.g. `ray job submit --headers`)."""
    from raywarden.client.enroll import request_token
    from raywarden.client.profile import load_profile
    from raywarden.client.renew import ensure_fresh

    chosen = load_profile(profile)
    ensure_fresh(chosen)
    _print_token(request_token(chosen, _ttl(ttl)), json_output)


@profile_app.command("list")
def profile_list(json_output: JsonOption = False) -> None:
    """Profiles on this machine; the current one is marked."""
    from raywarden.client.profile import current_profile_name, list_profiles

    current = current_profile_name()
    rows = []
    for p in list_profiles():
        try:
            not_after = p.certificate().not_valid_after_utc.isoformat()
        except (RaywardenError, OSError, ValueError):  # a damaged profile is listed, not fatal
            not_after = None
        rows.append(
            {
                "name": p.name,
                "identity": p.identity,
                "gateway_url": p.gateway_url,
                "current": p.name == current,
                "local_admin": p.state_dir is not None,
                "certificate_not_after": not_after,
            }
        )
    if json_output:
        print_json(rows)
        return
    if not rows:
        err_console.print("No profiles yet: `raywarden login URL --code CODE --ca-fingerprint SHA256`.")
    for row in rows:
        mark = "*" if row["current"] else " "
        console.print(f"{mark} {row['name']:<20} {row['identity']}  {row['gateway_url']}", markup=False)


@profile_app.command("use")
def profile_use(
    name: Annotated[str, typer.Argument(help="Profile to make current.")], json_output: JsonOption = False
) -> None:
    """Make a profile the current one."""
    from raywarden.client.profile import load_profile, set_current

    chosen = load_profile(name)
    set_current(chosen.name)
    if json_output:
        print_json({"current": chosen.name, "identity": chosen.identity})
    else:
        console.print(f"Current profile: {chosen.name} ({chosen.identity})", markup=False)


ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


@revoke_app.command("cert")
def revoke_cert(
    serial: Annotated[str, typer.Argument(help="Certificate serial (hex), see `user show`.")],
    reason: ReasonOption = "revoked by administrator",
    state: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke a certificate: refused by the gateway on its next request."""
    owner = IdentityAdmin(state_dir(state)).revoke_cert(serial, reason)
    _revoked("certificate", serial, owner, json_output)


@revoke_app.command("token")
def revoke_token(
    jti: Annotated[str, typer.Argument(help="Token id (jti), see `user show` or `token --json`.")],
    reason: ReasonOption = "revoked by administrator",
    state: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke a bearer token: refused by the gateway on its next request."""
    owner = IdentityAdmin(state_dir(state)).revoke_token(jti, reason)
    _revoked("token", jti, owner, json_output)


def _revoked(what: str, ident: str, owner: str, json_output: bool) -> None:
    if json_output:
        print_json({"revoked": what, "id": ident, "principal": owner})
    else:
        console.print(f"Revoked {what} {ident} of {owner}.", markup=False)
