"""`user`, `sa`, `revoke`: people, service accounts and their credentials (administration on the head host)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.cli.apikeys import key_app
from raywarden.cli.common import (
    JsonOption,
    StateDirOption,
    WideOption,
    console,
    err_console,
    print_json,
    print_rows,
    shell_command,
    state_dir,
)
from raywarden.errors import UsageError
from raywarden.gateway.tokens import expires_iso, parse_ttl
from raywarden.identity.admin import IdentityAdmin, Kind, NewCode
from raywarden.identity.store import Principal

user_app = typer.Typer(
    help="People: add, list, show, disable, enable, change groups (on the head host).", no_args_is_help=True
)
sa_app = typer.Typer(
    help="Service accounts for automation: add, list, show, token, key (API keys for Serve), disable, enable.",
    no_args_is_help=True,
)
revoke_app = typer.Typer(
    help="Revoke one certificate or bearer token at once (on the head host).", no_args_is_help=True
)

GroupOption = Annotated[
    list[str] | None,
    typer.Option("--group", "-g", help="Group to join (repeatable); it must exist unless --create-group."),
]
CreateGroupOption = Annotated[
    bool,
    typer.Option(
        "--create-group",
        help="Allow groups that no policy names and nobody is in yet (membership grants nothing until a "
        "policy names the group).",
    ),
]
CodeTtlOption = Annotated[
    str | None,
    typer.Option(
        "--code-ttl", help="Lifetime of the one-time enrollment code, e.g. 24h, 30m (default: 24h from the config)."
    ),
]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Name (1-63 lowercase letters, digits, '.', '-' or '_').")]


def register(app: typer.Typer) -> None:
    for kind, sub in (("user", user_app), ("sa", sa_app)):
        _principal_commands(sub, kind)  # type: ignore[arg-type]
    app.add_typer(user_app, name="user")
    sa_app.add_typer(key_app, name="key")
    app.add_typer(sa_app, name="sa")
    app.add_typer(revoke_app, name="revoke")


def _ttl(text: str | None) -> float | None:
    return None if text is None else parse_ttl(text)


def _principal_commands(sub: typer.Typer, kind: Kind) -> None:
    what = "user" if kind == "user" else "service account"

    @sub.command("add")
    def add(
        name: NameArg,
        group: GroupOption = None,
        create_group: CreateGroupOption = False,
        code_ttl: CodeTtlOption = None,
        state: StateDirOption = None,
        json_output: JsonOption = False,
    ) -> None:
        """Create it and print a one-time enrollment code for `raywarden login` (shown only now)."""
        admin = IdentityAdmin(state_dir(state))
        groups = list(group or [])
        created = admin.add(kind, name, groups, code_ttl_s=_ttl(code_ttl), create_groups=create_group)
        _warn_unreferenced(admin, groups)
        _print_code(admin, created, json_output, created=True)

    @sub.command("list")
    def list_(state: StateDirOption = None, wide: WideOption = False, json_output: JsonOption = False) -> None:
        """List them with their groups and status (names and SPIFFE IDs in full; --wide: one line each)."""
        admin = IdentityAdmin(state_dir(state))
        rows = [_row(p) for p in admin.store.list_principals(kind)]
        if json_output:
            print_json(rows)
            return
        if not rows:
            err_console.print(f"No {what}s yet: `raywarden {kind} add NAME --group GROUP`.")
            return
        lines = [
            [
                row["name"],
                escape(", ".join(row["groups"])),
                "disabled" if row["disabled"] else "active",
                row["spiffe_id"],
            ]
            for row in rows
        ]
        print_rows(("name", "groups", "status", "spiffe id"), lines, wrap=("groups",), wide=wide)

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
        if kind == "sa":
            console.print(f"  renewal after expiry: {_grace_text(info['renew_grace_s'])}", markup=False)
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
                f"{counts['tokens']} token(s), {counts['enrollment_codes']} enrollment code(s), "
                f"{counts.get('api_keys', 0)} API key(s)."
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
        create_group: CreateGroupOption = False,
        state: StateDirOption = None,
        json_output: JsonOption = False,
    ) -> None:
        """Show or change group membership (takes effect on the next request)."""
        admin = IdentityAdmin(state_dir(state))
        principal = (
            admin.change_groups(kind, name, list(add or []), list(remove or []), create_groups=create_group)
            if add or remove
            else admin.get(kind, name)
        )
        _warn_unreferenced(admin, list(add or []))
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

        @sub.command("renewal")
        def sa_renewal(
            name: NameArg,
            grace: Annotated[
                str | None,
                typer.Option(
                    "--grace",
                    help="Renew an expired certificate within this long after it expired, e.g. 7d (at most 30d).",
                ),
            ] = None,
            off: Annotated[bool, typer.Option("--off", help="Renew only before the certificate expires.")] = False,
            state: StateDirOption = None,
            json_output: JsonOption = False,
        ) -> None:
            """Show or set whether the account's certificate renews after it expired, for unattended use (a CI
            runner idle over a weekend). The renewal is bound to the account's last key: a certificate that was
            renewed already and comes back means a copied key, and revokes the account's credentials."""
            from raywarden.cli.ca import parse_duration

            if grace is not None and off:
                raise UsageError("--grace and --off exclude each other", hint="`raywarden sa renewal --help`")
            admin = IdentityAdmin(state_dir(state))
            if grace is not None or off:
                admin.set_renewal(name, None if off else parse_duration(grace or "", "--grace"))
            seconds = admin.describe(admin.get("sa", name))["renew_grace_s"]
            if json_output:
                print_json({"name": name, "renew_grace_s": seconds})
            else:
                console.print(f"{name}: renewal after expiry {_grace_text(seconds)}", markup=False)


def _grace_text(seconds: float | None) -> str:
    if seconds is None:
        return "off (the certificate renews while valid only)"
    return f"within {seconds / 86400:g} days" if seconds >= 86400 else f"within {seconds / 3600:g} hours"


def _warn_unreferenced(admin: IdentityAdmin, groups: list[str]) -> None:
    for group in admin.unreferenced(groups):
        err_console.print(
            f"[yellow]note:[/] no policy names group {escape(group)!r} yet: membership grants nothing until one does "
            "(see docs/policy.md)"
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
    command = shell_command("raywarden", "login", url, "--code", code, "--ca-fingerprint", fp)
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


ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


@revoke_app.command("cert")
def revoke_cert(
    serial: Annotated[str, typer.Argument(help="Certificate serial (hex), see `user show`.")],
    reason: ReasonOption = "revoked by administrator",
    state: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke a certificate: refused by the gateway on its next request, with the bearer tokens minted with it."""
    revoked = IdentityAdmin(state_dir(state)).revoke_cert(serial, reason)
    renewals = [s for s in revoked.serials if s != revoked.serial]
    if json_output:
        print_json(
            {
                "revoked": "certificate",
                "id": revoked.serial,
                "principal": revoked.principal,
                "revoked_serials": list(revoked.serials),
                "revoked_count": len(revoked.serials),
            }
        )
        return
    if revoked.serial in revoked.serials:
        _revoked("certificate", revoked.serial, revoked.principal, json_output)
    else:
        console.print(f"Certificate {revoked.serial} of {revoked.principal} was revoked already.", markup=False)
    if renewals:
        console.print(
            f"Also revoked {len(renewals)} certificate(s) renewed from it: {', '.join(renewals)}.", markup=False
        )


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
        if what == "certificate":
            console.print("Bearer tokens issued with it and browser sessions started with it end too.")
