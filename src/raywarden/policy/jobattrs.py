"""Cedar attributes of jobs: what a submission asks for (runtime_env included) and what Ray says of a job.

The runtime_env analysis (raywarden.policy.runtime_env) is deliberately conservative: anything it cannot classify
as a plain requirement from the configured index, or as a form it models, lands in a set the default pack
refuses (``pip_direct_refs``, ``pip_options``, ``unsupported``...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from raywarden.policy.runtime_env import RAY_RUNTIME_ENV_FIELDS, runtime_env_attrs, runtime_env_facts

__all__ = [
    "OWNER_KEY",
    "RAY_RUNTIME_ENV_FIELDS",
    "job_attrs",
    "job_entity_id",
    "milli",
    "runtime_env_attrs",
    "runtime_env_facts",
    "submission_attrs",
]

OWNER_KEY = "raywarden.owner"

# Amounts in thousandths as a Cedar Long. Fractions are rounded up and huge or non-finite requests are
# clamped to the largest Long: both only ever make a request look bigger than it is.
_LONG_MAX = 2**63 - 1


def milli(value: Any) -> int:
    """CPUs, GPUs or a custom resource amount in thousandths (Cedar ``Long``).

    Never raises: a value that is no number (only the command line's test cases can send one) counts as the
    largest amount, and an integer too large for a float is clamped before any conversion."""
    if type(value) is int:  # the usual whole number, exactly (bool is no int here)
        return 0 if value <= 0 else min(value, _LONG_MAX // 1000) * 1000
    if not value:  # None, 0, 0.0, False: nothing asked
        return 0
    if type(value) is not float and type(value) is not bool:
        return _LONG_MAX
    number = float(value)
    if not math.isfinite(number) or number * 1000 >= _LONG_MAX:
        return _LONG_MAX
    if number <= 0:  # before scaling: a huge negative amount would scale to -inf
        return 0
    return math.ceil(round(number * 1000, 6))


def _bytes(value: Any) -> int:
    """A memory amount in bytes, clamped like ``milli``."""
    if type(value) is int:
        return min(max(value, 0), _LONG_MAX)
    if not value:
        return 0
    if type(value) is not float or not math.isfinite(value) or value >= _LONG_MAX:
        return _LONG_MAX
    return max(0, math.ceil(value))


def submission_attrs(body: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The ``NewJob`` attributes of a job submission body (already validated by gateway.jobs).

    GPUs, memory and custom resources, which few submissions ask for, are optional in the schema and left out
    when nothing is asked (0, no resources): Cedar parses every value it is given at a few microseconds each,
    and the default pack reads an absent amount as 0 and absent resources as none. Never raises, whatever the
    body holds (``raywarden policy test`` and ``explain`` build bodies that no model checked).
    """
    get = body.get
    resources = get("entrypoint_resources")
    memory = get("entrypoint_memory")
    selector = get("entrypoint_label_selector")
    metadata = get("metadata")
    env = runtime_env_attrs(get("runtime_env"))
    submission_id = get("submission_id") or get("job_id")
    entrypoint = get("entrypoint")
    # Absent and empty fields, the usual case, skip the work: the gateway builds this on every submission.
    attrs: dict[str, Any] = {
        "submission_id": submission_id if isinstance(submission_id, str) else "",
        "owner": owner,
        "entrypoint": entrypoint if isinstance(entrypoint, str) else "",
        "entrypoint_milli_cpus": milli(get("entrypoint_num_cpus")),
    }
    gpus = milli(get("entrypoint_num_gpus"))
    if gpus:
        attrs["entrypoint_milli_gpus"] = gpus
    if memory and (memory := _bytes(memory)):
        attrs["entrypoint_memory"] = memory
    if resources:
        if isinstance(resources, dict):
            attrs["entrypoint_resources"] = sorted(map(str, resources))
            if resources and (most := max(milli(v) for v in resources.values())):
                attrs["entrypoint_resources_max_milli"] = most
        else:  # no mapping of names to amounts: asks for something nobody can name, as much as can be
            attrs["entrypoint_resources"] = ["(not a mapping)"]
            attrs["entrypoint_resources_max_milli"] = _LONG_MAX
    attrs["label_selector_keys"] = sorted(map(str, selector)) if isinstance(selector, dict) else []
    attrs["metadata_keys"] = sorted(map(str, metadata)) if isinstance(metadata, dict) else []
    attrs["runtime_env"] = env
    attrs["runtime_env_facts"] = runtime_env_facts(env)
    attrs["env_var_prefixes"] = env["env_var_prefixes"]
    return attrs


def job_attrs(job_id: str, info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``Job`` attributes of a job Ray knows (``info`` is Ray's JobDetails), or of an unknown id."""
    info = info or {}
    metadata = info.get("metadata") or {}
    owner = metadata.get(OWNER_KEY) if isinstance(metadata, dict) else None

    def text(key: str) -> str:
        value = info.get(key)
        return value if isinstance(value, str) else ""

    return {
        "job_id": text("job_id") or job_id,
        "submission_id": text("submission_id"),
        "owner": owner if isinstance(owner, str) else "",
        "status": text("status") or ("UNKNOWN" if not info else ""),
        "entrypoint": text("entrypoint"),
        "job_type": text("type"),
    }


def job_entity_id(info: Mapping[str, Any], fallback: str) -> str:
    """A job's id for Cedar: its submission id when it has one (that is what clients use), else its job id."""
    for key in ("submission_id", "job_id"):
        value = info.get(key)
        if isinstance(value, str) and value:
            return value
    return fallback
