"""What `raywarden job submit` reads from its options, parsed as `ray job submit` parses them.

Stock Ray (``ray/dashboard/modules/job/cli.py``) joins the words after ``--`` with ``shlex.join``, reads
``--runtime-env`` as a YAML file, ``--runtime-env-json`` as JSON (one or the other), lets ``--working-dir``
override the runtime_env's, and reads ``--metadata-json``, ``--entrypoint-resources`` and
``--entrypoint-label-selector`` as JSON objects. Bad input is a usage error here, before anything is sent.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import yaml

from raywarden.errors import UsageError


def entrypoint_command(words: list[str] | None) -> str:
    """The job's shell command: the words after ``--``, quoted so that the shell sees exactly these words."""
    if not words:
        raise UsageError(
            "no entrypoint given", hint="put the job's command after --, e.g. `raywarden job submit -- python train.py`"
        )
    return shlex.join(words)


def runtime_env(yaml_file: Path | None, json_text: str | None, working_dir: str | None) -> tuple[dict[str, Any], bool]:
    """The runtime_env to submit, and whether --working-dir replaced one given in the runtime_env."""
    env: dict[str, Any] = {}
    if yaml_file is not None and json_text is not None:
        raise UsageError(
            "only one of --runtime-env and --runtime-env-json can be given", hint="put everything in one of them"
        )
    if yaml_file is not None:
        env = _yaml_object(yaml_file)
    elif json_text is not None:
        env = json_object(json_text, "--runtime-env-json", '{"pip": ["requests"]}')
    replaced = False
    if working_dir is not None:
        if "://" not in working_dir and not Path(working_dir).exists():
            raise UsageError(
                f"--working-dir {working_dir}: no such folder or file",
                hint="a local folder (uploaded with the job) or a remote URI of a .zip file (s3://, gs://, https://)",
            )
        replaced = "working_dir" in env
        env["working_dir"] = working_dir
    return env, replaced


def _yaml_object(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"--runtime-env {path}: {exc.strerror or exc}", hint="give the path of a YAML file") from None
    except yaml.YAMLError as exc:
        raise UsageError(
            f"--runtime-env {path} is not valid YAML: {' '.join(str(exc).split())}",
            hint="for example a file holding `pip: [requests]`",
        ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"--runtime-env {path} must hold a mapping (runtime_env fields), not a {type(value).__name__}")
    return value


def json_object(text: str, option: str, example: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} is not valid JSON: {exc}", hint=f"for example {option} '{example}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object", hint=f"for example {option} '{example}'")
    return value


def metadata(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    value = json_object(text, "--metadata-json", '{"team": "vision"}')
    if not all(isinstance(v, str) for v in value.values()):
        raise UsageError("--metadata-json values must be strings", hint='for example --metadata-json \'{"run": "7"}\'')
    return value


def amount(value: float | None, option: str) -> None:
    """Refuse a CPU, GPU or memory amount that is not a finite number >= 0 (nan and inf parse as floats)."""
    if value is not None and (not math.isfinite(value) or value < 0):
        raise UsageError(f"{option} {value} is not an amount", hint=f"a number >= 0, e.g. {option} 1")


def resources(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    example = '{"CustomResource": 1}' if option == "--entrypoint-resources" else '{"region": "us-west"}'
    return json_object(text, option, example)
