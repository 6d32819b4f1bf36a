"""Helpers shared by the audit tests: sample records and raw access to segment and checkpoint lines."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from raywarden.audit.layout import CHECKPOINTS_NAME, list_segments

MakeLog = Callable[..., Path]


def request_record(i: int) -> dict[str, object]:
    return {
        "kind": "request",
        "principal": f"spiffe://td/user/u{i % 3}",
        "action": "jobs.submit" if i % 2 else "jobs.list",
        "decision": "deny" if i % 5 == 0 else "allow",
        "status": 403 if i % 5 == 0 else 200,
        "request_id": f"req-{i}",
        "resource": f"job/raysubmit_{i}",
        "latency_ms": 1.5,
    }


def segment_lines(audit_dir: Path, index: int = 0) -> tuple[Path, list[bytes]]:
    path = list_segments(audit_dir)[index].path
    return path, path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def checkpoint_lines(audit_dir: Path) -> list[bytes]:
    return (audit_dir / CHECKPOINTS_NAME).read_bytes().split(b"\n")[:-1]


def python_env() -> dict[str, str]:
    """Environment for a child interpreter that imports this checkout's raywarden."""
    import raywarden

    src = str(Path(raywarden.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (real processes, real file locks)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
