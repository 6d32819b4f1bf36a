"""Build the Cedar entities and context of a decision. Used by the gateway and by `raywarden policy`, so that
a decision explained on the command line is built exactly as the gateway builds it."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from typing import Any

from raywarden.policy.engine import CLUSTER_ID, Entity
from raywarden.policy.jobattrs import job_attrs, milli, submission_attrs
from raywarden.state import ClusterConfig

IN_CLUSTER = (("Cluster", CLUSTER_ID),)
PRINCIPAL_TYPES = {"user": "User", "sa": "ServiceAccount"}


def principal_entity(spiffe_id: str, kind: str, name: str, groups: tuple[str, ...] | list[str]) -> Entity:
    return Entity(PRINCIPAL_TYPES[kind], spiffe_id, {"name": name, "spiffe_id": spiffe_id},
                  tuple(("Group", g) for g in groups))


def cluster_entity(config: ClusterConfig | None) -> Entity:
    """The cluster, carrying the job limits the default pack applies to developers."""
    config = config or ClusterConfig()
    return Entity("Cluster", CLUSTER_ID, {
        "developer_limits": {
            "milli_cpus": milli(config.developer_max_cpus),
            "milli_gpus": milli(config.developer_max_gpus),
            "memory": config.developer_max_memory_bytes,
            "resources": sorted(config.developer_resources),
            "milli_resource_amount": milli(config.developer_max_resource_amount),
        }
    })


def new_job_entity(body: Mapping[str, Any], owner: str) -> Entity:
    attrs = submission_attrs(body, owner)
    return Entity("NewJob", attrs["submission_id"] or "(new)", attrs, IN_CLUSTER)


def job_entity(job_id: str, info: Mapping[str, Any] | None) -> Entity:
    return Entity("Job", job_id, job_attrs(job_id, info), IN_CLUSTER)


def package_entity(name: str) -> Entity:
    return Entity("Package", name, {"name": name}, IN_CLUSTER)


def request_context(auth_method: str, source: str, auth_age_s: float,
                    now: dt.datetime | None = None) -> dict[str, Any]:
    """The ``RequestContext`` of the schema. Times are plain Longs: every extension value in the context
    costs Cedar about as much as the rest of the decision (bench/policy_bench.py), and the source address
    is the one worth it (``context.source.isInRange(ip("10.0.0.0/8"))``). An unparseable source address
    becomes 0.0.0.0, which no sensible allow range contains."""
    try:
        address = str(ipaddress.ip_address(source))
    except ValueError:
        address = "0.0.0.0"  # noqa: S104 - a value, not a bind address
    moment = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    return {
        "auth_method": auth_method,
        "source_ip": source,
        "source": {"__extn": {"fn": "ip", "arg": address}},
        "auth_age_s": max(0, int(auth_age_s)),
        "time": int(moment.timestamp()),
        "hour_utc": moment.hour,
        "weekday_utc": moment.weekday(),
    }
