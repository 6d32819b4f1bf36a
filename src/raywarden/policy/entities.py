"""Build the Cedar entities and context of a decision. Used by the gateway and by `raywarden policy`, so that
a decision explained on the command line is built exactly as the gateway builds it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import socket
import time
from collections.abc import Mapping
from typing import Any

from raywarden.config import ClusterConfig
from raywarden.policy.engine import CLUSTER_ID, Entity
from raywarden.policy.jobattrs import job_attrs, milli, submission_attrs

IN_CLUSTER = (("Cluster", CLUSTER_ID),)
PRINCIPAL_TYPES = {"user": "User", "sa": "ServiceAccount"}


def principal_entity(spiffe_id: str, kind: str, name: str, groups: tuple[str, ...] | list[str]) -> Entity:
    return Entity(
        PRINCIPAL_TYPES[kind], spiffe_id, {"name": name, "spiffe_id": spiffe_id}, tuple(("Group", g) for g in groups)
    )


# What the default pack lets developers put in a runtime_env (``developers-submit``), as runtime_env_facts
# (raywarden.policy.runtime_env): these fields (Ray's SDK adds _ray_commit itself), the pip / uv options Ray's SDK
# sets by default, per-requirement hashes (they only narrow what pip accepts), conda's default channels, and code
# from packages uploaded through this gateway. Any other fact refuses: another field or a plugin, a container,
# another option, a direct reference, a spec file or conda env from the node's disk, another conda channel or
# setting, code from another URL or a node path, a log file, a form the analysis does not model.
DEVELOPER_RUNTIME_ENV_FACTS = (
    "key:working_dir",
    "key:py_modules",
    "key:pip",
    "key:uv",
    "key:conda",
    "key:env_vars",
    "key:excludes",
    "key:config",
    "key:worker_process_setup_hook",
    "key:_ray_commit",
    "pip_option:--no-cache",
    "pip_option:--no-cache-dir",
    "pip_option:--disable-pip-version-check",
    "pip_option:--hash",
    "conda_channel:defaults",
    "uri_scheme:gcs",
)
# Environment variable prefixes (raywarden.policy.runtime_env.env_var_prefix: the part of the name before the
# first "_" after leading ones, upper-cased) that steer installers, the loader, proxies or Ray itself: Ray passes
# env_vars to pip and uv, so PIP_INDEX_URL is an index, and PYTHON_KEYRING_BACKEND a class pip imports.
DENIED_ENV_VAR_PREFIXES = (
    "PIP",
    "UV",
    "CONDA",
    "CONDARC",
    "MAMBA",
    "PYTHON",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "LD",
    "DYLD",
    "GIT",
    "HTTP",
    "HTTPS",
    "ALL",
    "NO",
    "REQUESTS",
    "CURL",
    "SSL",
    "HOME",
    "XDG",
    "NETRC",
    "VIRTUAL",
    "PATH",
    "RAY",
)


def cluster_entity(config: ClusterConfig | None) -> Entity:
    """The cluster, carrying the job limits the default pack applies to developers.

    The pack's runtime_env allowlist and env var denylist are attributes of the cluster rather than set
    literals in developers.cedar: Cedar builds a literal set on every evaluation (about 15 us for these two),
    and the cluster entity is parsed once per policy set.
    """
    config = config or ClusterConfig()
    return Entity(
        "Cluster",
        CLUSTER_ID,
        {
            "developer_runtime_env": {
                "allowed_facts": sorted(DEVELOPER_RUNTIME_ENV_FACTS),
                "denied_env_var_prefixes": sorted(DENIED_ENV_VAR_PREFIXES),
            },
            "developer_limits": {
                "milli_cpus": milli(config.developer_max_cpus),
                "milli_gpus": milli(config.developer_max_gpus),
                "memory": config.developer_max_memory_bytes,
                "resources": sorted(config.developer_resources),
                "milli_resource_amount": milli(config.developer_max_resource_amount),
            },
        },
    )


def new_job_entity(body: Mapping[str, Any], owner: str) -> Entity:
    attrs = submission_attrs(body, owner)
    return Entity("NewJob", attrs["submission_id"] or "(new)", attrs, IN_CLUSTER)


def job_entity(job_id: str, info: Mapping[str, Any] | None) -> Entity:
    return Entity("Job", job_id, job_attrs(job_id, info), IN_CLUSTER)


def package_entity(name: str) -> Entity:
    return Entity("Package", name, {"name": name}, IN_CLUSTER)


def request_context(auth_method: str, source: str, auth_age_s: float, now: dt.datetime | None = None) -> dict[str, Any]:
    """The ``RequestContext`` of the schema. Times are plain Longs: every extension value in the context
    costs Cedar about as much as the rest of the decision (bench/policy_bench.py), and the source address
    is the one worth it (``context.source.isInRange(ip("10.0.0.0/8"))``). An unparseable source address
    becomes 0.0.0.0, which no sensible allow range contains."""
    moment = time.time() if now is None else now.timestamp()
    return request_context_at(auth_method, source, auth_age_s, moment)


def request_context_at(auth_method: str, source: str, auth_age_s: float, moment: float) -> dict[str, Any]:
    """``request_context`` at a Unix time: the gateway's path, which has one already and no time to spare."""
    seconds = math.floor(moment)
    return {
        "auth_method": auth_method,
        "source_ip": source,
        "source": {"__extn": {"fn": "ip", "arg": _address(source)}},
        "auth_age_s": max(0, int(auth_age_s)),
        "time": int(moment),
        "hour_utc": seconds % 86400 // 3600,
        "weekday_utc": (seconds // 86400 + 3) % 7,  # 1970-01-01 was a Thursday (weekday 3)
    }


def _address(source: str) -> str:
    """The canonical text of an IP address, or 0.0.0.0 for anything else."""
    try:
        # The usual case, in C; it accepts exactly the dotted quads ipaddress accepts, in canonical form.
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, source))
    except (OSError, ValueError):
        pass
    try:
        return str(ipaddress.ip_address(source))
    except ValueError:
        return "0.0.0.0"  # noqa: S104 - a value, not a bind address
