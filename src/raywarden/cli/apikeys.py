"""`sa key`: API keys of service accounts for Ray Serve's applications (docs/serve.md), on the head host."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from raywarden.cli.common import JsonOption, StateDirOption, WideOption, console, print_json, print_rows, state_dir
from raywarden.gateway.tokens import expires_iso, parse_ttl
from raywarden.identity.admin import IdentityAdmin

key_app = typer.Typer(
    help="API keys of a service account for Ray Serve's applications: create (shown once), list, revoke.",
    no_args_is_help=True,
)
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The service account.")]


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return dt.datetime.fromtimestamp(moment, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@key_app.command("create")
def create(
    name: NameArg,
    app: Annotated[
        list[str] | None,
        typer.Option("--app", help="An application the key may call (repeatable); default: every one its account may."),
    ] = None,
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime, e.g. 90d, 12h (at most 2 years).")] = "90d",
    state: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create an API key and print it (shown only now; only its hash is kept).

    Clients send it as `Authorization: Bearer rwk_...` to the Serve listener. The key acts as its service
    account, within --app if given: policy still decides each call."""
    new = IdentityAdmin(state_dir(state)).api_key_create(name, list(app or []), parse_ttl(ttl))
    if json_output:
        print_json(
            {
                "key": new.key.reveal(),
                "key_id": new.key_id,
                "spiffe_id": new.spiffe_id,
                "apps": list(new.apps),
                "expires_at": expires_iso(new.expires_at),
            }
        )
        return
    # Only the key on stdout, so that `KEY=$(raywarden sa key create NAME)` works; the rest on stderr.
    typer.echo(new.key.reveal())
    scope = ", ".join(new.apps) if new.apps else "every application its account may call"
    typer.echo(
        f"API key {new.key_id} of {name}: {scope}; expires {expires_iso(new.expires_at)}. Shown only now.", err=True
    )


@key_app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="Only this service account's keys.")] = None,
    state: StateDirOption = None,
    wide: WideOption = False,
    json_output: JsonOption = False,
) -> None:
    """Every API key (or NAME's) with its scope, expiry, status and last use; never the key itself."""
    keys = IdentityAdmin(state_dir(state)).api_keys(name)
    if json_output:
        print_json([k.as_dict() for k in keys])
        return
    rows = [
        [
            k.key_id,
            k.spiffe_id.rsplit("/", 1)[-1],
            ", ".join(k.apps) or "*",
            k.status(),
            _when(k.expires_at),
            f"{_when(k.last_used_at)} {k.last_used_from or ''}".strip(),
        ]
        for k in keys
    ]
    print_rows(("key id", "account", "apps", "status", "expires", "last used"), rows, wrap=("apps",), wide=wide)
    if not keys:
        console.print("No API keys.")


@key_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id, as `sa key list` shows it.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why (recorded in the audit log).")
    ] = "revoked by administrator",
    state: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke an API key: refused on its next call (the gateway reads the store on every call)."""
    owner = IdentityAdmin(state_dir(state)).api_key_revoke(key_id, reason)
    if json_output:
        print_json({"revoked": "api_key", "id": key_id, "principal": owner})
    else:
        console.print(f"Revoked API key {key_id} of {owner}.", markup=False)
