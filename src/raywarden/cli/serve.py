"""`serve`: deploy, list, delete Ray Serve applications through the gateway, and name who may call them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from raywarden.cli.common import JsonOption, ProfileOption, console, print_json, print_rows
from raywarden.client.profile import load_profile
from raywarden.client.serve import APPS, call, read_config

serve_app = typer.Typer(
    help="Ray Serve applications through the gateway: deploy (you become the owner), list, delete, groups. "
    "Calls go to the Serve listener (docs/serve.md).",
    no_args_is_help=True,
)
NameArg = Annotated[str, typer.Argument(metavar="APP", help="The application's name.")]
GroupsOption = Annotated[
    list[str] | None, typer.Option("--group", "-g", help="A group whose members may call it (repeatable).")
]


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")


@serve_app.command("deploy")
def deploy(
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="A Serve config, as `serve build` writes.")],
    group: GroupsOption = None,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Deploy the config's applications; every other application stays as it is.

    You own the applications you create; only owners and admins may change them. --group names who may call
    each application (or the config's own `raywarden: {apps: {NAME: {invoke_groups: [...]}}}` block)."""
    answer = call(load_profile(profile), "PUT", APPS, read_config(config, list(group or [])))
    if json_output:
        print_json(answer)
        return
    for app in answer.get("applications", []):
        console.print(
            f"{app.get('change', '?'):>9}  {app.get('name')}  (owner {app.get('owner') or '-'})", markup=False
        )
    console.print("Ray runs them in a few seconds: `raywarden serve list` shows their status.")


@serve_app.command("list")
def list_(profile: ProfileOption = None, json_output: JsonOption = False) -> None:
    """The applications Serve runs, with their route prefix and status."""
    details: dict[str, Any] = call(load_profile(profile), "GET", "/api/serve/applications/") or {}
    apps = details.get("applications") or {}
    rows = [
        {"name": name, "route_prefix": info.get("route_prefix"), "status": info.get("status")}
        for name, info in sorted(apps.items())
        if isinstance(info, dict)
    ]
    if json_output:
        print_json(rows)
        return
    print_rows(
        ("name", "route prefix", "status"), [[r["name"], str(r["route_prefix"]), str(r["status"])] for r in rows]
    )
    if not rows:
        console.print("No Serve applications.")


@serve_app.command("delete")
def delete(name: NameArg, profile: ProfileOption = None, json_output: JsonOption = False) -> None:
    """Delete one application (its owner or an admin)."""
    answer = call(load_profile(profile), "DELETE", f"{APPS}/{quote(name, safe='')}")
    if json_output:
        print_json(answer)
    else:
        console.print(f"Deleted {name}.", markup=False)


@serve_app.command("groups")
def groups(
    name: NameArg, group: GroupsOption = None, profile: ProfileOption = None, json_output: JsonOption = False
) -> None:
    """Set the groups whose members may call APP (no --group: only its owner and admins)."""
    body = {"invoke_groups": list(group or [])}
    answer = call(load_profile(profile), "PUT", f"{APPS}/{quote(name, safe='')}/groups", body)
    if json_output:
        print_json(answer)
    else:
        console.print(f"{name}: callable by {', '.join(answer.get('invoke_groups', [])) or 'its owner and admins'}.")
