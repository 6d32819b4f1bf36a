"""Entry point: assembles the command groups and turns raywarden errors into messages and exit codes."""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.errors import RaywardenError

PROG = "raywarden"

app = typer.Typer(
    name=PROG,
    help="A zero-trust control plane for Ray: identities, policy, audit, and a gateway in front of the dashboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if not value:
        return
    try:
        ray_version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        ray_version = "not installed"
    typer.echo(f"{PROG} {metadata.version('raywarden')} (Ray {ray_version}, Python {sys.version.split()[0]})")
    raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """A zero-trust control plane for Ray: identities, policy, audit, and a gateway in front of the dashboard."""


# One module per command group under raywarden.cli, each with a `register(app)` function.
COMMAND_MODULES = (
    "cluster",
    "jobs",
    "audit",
    "ca",
    "scan",
    "nodes",
    "certs",
    "identity",
    "profiles",
    "doctor",
    "policy",
    "ui",
    "serve",
)


_registered: list[str] = []


def _register() -> None:
    """Add every command group to ``app`` (once, however often ``main`` runs in one process)."""
    import importlib

    for name in COMMAND_MODULES:
        if name not in _registered:
            importlib.import_module(f"raywarden.cli.{name}").register(app)
            _registered.append(name)


def _click_errors() -> tuple[type[Exception], ...]:
    """Usage errors come from the click bundled in typer (``typer.TyperException``) or, with older typer,
    from the click package itself."""
    found: list[type[Exception]] = []
    bundled = getattr(typer, "TyperException", None)
    if isinstance(bundled, type):
        found.append(bundled)
    try:
        import click

        found.append(click.ClickException)
    except ImportError:  # pragma: no cover - click ships with Ray
        pass
    return tuple(found)


def _usage_hint(ctx: Any, message: str) -> str:
    path = getattr(ctx, "command_path", None) or PROG
    if path.endswith(" job submit") and "No such option" in message:
        return (
            "options of the job's own command go after --, e.g. "
            f"`{PROG} job submit --working-dir . -- python train.py --epochs 3`; "
            f"`{path} --help` lists this command's options"
        )
    return f"`{path} --help` lists the options and arguments"


def _show_usage_error(exc: Exception) -> int:
    from raywarden.cli.common import err_console

    format_message = getattr(exc, "format_message", None)
    message = str(format_message() if callable(format_message) else exc).strip()
    code = int(getattr(exc, "exit_code", 2))
    if not message:
        return 0  # a group called without a command: its help was printed
    one_line = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {escape(one_line)}")
    err_console.print(f"[yellow]hint:[/] {escape(_usage_hint(getattr(exc, 'ctx', None), message))}")
    return code


def main() -> None:
    _register()
    try:
        rc = app(prog_name=PROG, standalone_mode=False)
    except RaywardenError as exc:
        from raywarden.cli.common import err_console

        err_console.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except _click_errors() as exc:
        sys.exit(_show_usage_error(exc))
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
