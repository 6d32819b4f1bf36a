"""Options and output helpers shared by every command group."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

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


def state_dir(option: Path | None) -> StateDir:
    return StateDir((option or default_state_dir()).expanduser().absolute())


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
