"""Options and output helpers shared by every command group."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from raywarden.state import StateDir, default_state_dir

# Human output goes to stderr when --json is on, so stdout stays machine-readable.
# soft_wrap: fingerprints, URLs and tokens must stay on one line to be copied.
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Cluster state dir (default: $RAYWARDEN_STATE_DIR or $RAYWARDEN_HOME/cluster).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
WideOption = Annotated[
    bool, typer.Option("--wide", "-w", help="One line per row, however wide (for copying and grep).")
]
ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", help="Client profile to use (default: $RAYWARDEN_PROFILE or the current profile)."),
]


def state_dir(option: Path | None) -> StateDir:
    return StateDir((option or default_state_dir()).expanduser().absolute())


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


# A first job that shows the cluster answers (Ray 2.60 needs ray.init() before the state API).
FIRST_JOB = ("python", "-c", "import ray; ray.init(); print(ray.cluster_resources())")


def shell_command(*words: str | Path) -> str:
    """A command line that a POSIX shell runs as these exact words."""
    return shlex.join(str(w) for w in words)


def print_next(*commands: Sequence[str | Path], out: Console | None = None) -> None:
    """``Next:`` and one command per line, quoted for the shell and never wrapped, so it can be pasted."""
    target = out or console
    target.print("Next:")
    for words in commands:
        target.print(f"  {shell_command(*words)}", markup=False, soft_wrap=True)


# Between two columns of a SIMPLE_HEAD table without edges: padding, divider, padding.
_COLUMN_GAP = 3
# A wrapping column is never made narrower than this (or its longest word).
_MIN_WRAP = 12


def print_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    wrap: Sequence[str] = (),
    wide: bool = False,
    title: str | None = None,
    out: Console | None = None,
) -> None:
    """Print a table that fits the terminal (80 columns outside one) without ever cutting a value.

    ``rows`` hold Rich markup (escape what comes from outside). Every column stays whole on one line (ids,
    names, URLs, dates), except those named in ``wrap`` (free text such as an entrypoint), which wrap. When
    even that does not fit, the table is printed wider than the terminal rather than cut; ``wide`` prints
    every row on one line.
    """
    target = out or console
    rendered = Table(title=title, expand=False, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    full: list[int] = []
    least: list[int] = []
    for index, name in enumerate(columns):
        texts = [Text.from_markup(row[index]) for row in rows]
        longest = max([cell_len(name), *(t.cell_len for t in texts)])
        full.append(longest)
        if name in wrap:
            rendered.add_column(name, overflow="fold")
            words = [cell_len(w) for t in texts for w in t.plain.split()] or [0]
            least.append(min(longest, max(_MIN_WRAP, cell_len(name), *words)))
        else:
            rendered.add_column(name, no_wrap=True)
            least.append(longest)
    for row in rows:
        rendered.add_row(*row)
    gaps = _COLUMN_GAP * (len(columns) - 1)
    natural, needed = sum(full) + gaps, sum(least) + gaps
    if natural <= target.width or (not wide and needed <= target.width):
        target.print(rendered)
        return
    Console(
        file=target.file,
        width=natural if wide else needed,
        highlight=False,
        no_color=target.no_color,
        force_terminal=target.is_terminal,
        color_system=target.color_system,  # type: ignore[arg-type]
    ).print(rendered)
