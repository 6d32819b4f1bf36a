"""What a running gateway tells `raywarden status` and `down`: its workers and its metrics address (light to
import: the CLI reads it without loading the gateway)."""

from __future__ import annotations

from pathlib import Path

from raywarden.state import StateDir

METRICS_HOST = "127.0.0.1"


def workers_file(state: StateDir) -> Path:
    """Where the supervisor lists its worker processes and metrics port (the run dir)."""
    return state.run_dir / "gateway.json"


def metrics_url(port: int) -> str:
    return f"http://{METRICS_HOST}:{port}/metrics"
