"""Entry point: assembles the command groups and turns raywarden errors into messages and exit codes."""

from __future__ import annotations

import sys

import typer

from raywarden.errors import RaywardenError

app = typer.Typer(
    name="raywarden",
    help="A zero-trust control plane for Ray: identities, policy, audit, and a gateway in front of the dashboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# One module per command group under raywarden.cli, each with a `register(app)` function.
COMMAND_MODULES = (
    "cluster",
    "jobs",
    "audit",
    "scan",
    "nodes",
    "identity",
    "doctor",
    "policy",
    "ui",
)


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"raywarden.cli.{name}").register(app)


def main() -> None:
    _register()
    try:
        rc = app(standalone_mode=False)
    except RaywardenError as exc:
        from raywarden.cli.common import err_console

        err_console.print(f"[bold red]error:[/] {exc.message}", markup=True)
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}", markup=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
