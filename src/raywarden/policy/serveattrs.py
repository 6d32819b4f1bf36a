"""Cedar entities and context of Ray Serve decisions: an application Ray runs (``ServeApp``), what a deploy
asks of one application (``NewServeApp``), and a call's context (``ServeContext``). Used by the gateway and by
`raywarden policy`, so that a decision explained on the command line is built as the gateway builds it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from raywarden.policy.jobattrs import milli, runtime_env_attrs, runtime_env_facts
from raywarden.policy.request import Entity

IN_CLUSTER = (("Cluster", "ray"),)
_LONG_MAX = 2**63 - 1
GROUP_TYPE = "Raywarden::Group"


def group_refs(groups: Iterable[str]) -> list[dict[str, Any]]:
    """Cedar entity references to groups, as ``principal in resource.invoke_groups`` reads them."""
    return [{"__entity": {"type": GROUP_TYPE, "id": g}} for g in sorted(set(groups))]


def serve_app_entity(
    name: str,
    *,
    route_prefix: str | None,
    deployments: Iterable[str],
    owner: str,
    invoke_groups: Iterable[str],
) -> Entity:
    return Entity(
        "ServeApp",
        name,
        {
            "name": name,
            "route_prefix": route_prefix or "",
            "deployments": sorted(set(deployments)),
            "owner": owner,
            "invoke_groups": group_refs(invoke_groups),
        },
        IN_CLUSTER,
    )


def serve_context(
    base: Mapping[str, Any], method: str, path: str, api_key_apps: tuple[str, ...] | None, model_id: str | None
) -> dict[str, Any]:
    """The request context (raywarden.policy.entities.request_context_at) plus what a Serve call adds."""
    context = {**base, "method": method, "path": path}
    if api_key_apps:
        context["api_key_apps"] = sorted(api_key_apps)
    if model_id:
        context["model_id"] = model_id
    return context


# How a placement group bundle names what ray_actor_options call num_cpus, num_gpus and memory.
_BUNDLE_KEY = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


def _amount(options: Mapping[str, Any], bundles: Any, key: str, convert: Any) -> int:
    """One replica's ask: its actor options plus every placement group bundle (which reserve it too)."""
    total = int(convert(options.get(key)))
    if isinstance(bundles, list):
        for bundle in bundles:
            if isinstance(bundle, Mapping):
                total += int(convert(bundle.get(_BUNDLE_KEY[key])))
    return min(total, _LONG_MAX)


def _bytes(value: Any) -> int:
    if type(value) is int:
        return max(0, value)
    if not value:
        return 0
    if type(value) is float and value < _LONG_MAX:
        return max(0, int(value) + (value % 1 > 0))
    return _LONG_MAX


def _replicas(deployment: Mapping[str, Any]) -> int:
    scaling = deployment.get("autoscaling_config")
    if isinstance(scaling, Mapping) and scaling.get("max_replicas") is not None:
        found = scaling.get("max_replicas")
    else:
        found = deployment.get("num_replicas", 1)
    if type(found) is int:
        return max(0, found)
    return _LONG_MAX  # "auto" or a value no count reads: as many as can be


def new_serve_app_attrs(
    app: Mapping[str, Any],
    *,
    exists: bool,
    owner: str,
    overlapped_owners: Iterable[str],
    invoke_groups: Iterable[str],
) -> dict[str, Any]:
    """``NewServeApp`` attributes of one application's config (already validated by the gateway's models).
    Never raises, whatever ``app`` holds: `raywarden policy explain` builds configs no model checked."""
    envs: list[Any] = [app.get("runtime_env")]
    cpus = gpus = memory = most = 0
    replicas = 0
    resources: set[str] = set()
    names: list[str] = []
    deployments = app.get("deployments")
    for deployment in deployments if isinstance(deployments, list) else []:
        if not isinstance(deployment, Mapping):
            continue
        names.append(str(deployment.get("name", "")))
        options = deployment.get("ray_actor_options")
        options = options if isinstance(options, Mapping) else {}
        envs.append(options.get("runtime_env"))
        bundles = deployment.get("placement_group_bundles")
        cpus = max(cpus, _amount(options, bundles, "num_cpus", milli))
        gpus = max(gpus, _amount(options, bundles, "num_gpus", milli))
        memory = max(memory, _amount(options, bundles, "memory", _bytes))
        custom = options.get("resources")
        if isinstance(custom, Mapping):
            resources.update(map(str, custom))
            most = max([most, *(milli(v) for v in custom.values())])
        elif custom is not None:
            resources.add("(not a mapping)")
            most = _LONG_MAX
        replicas = max(replicas, _replicas(deployment))
    facts: set[str] = set()
    prefixes: set[str] = set()
    for env in envs:
        if env is None:
            continue
        parsed = runtime_env_attrs(env)
        facts.update(runtime_env_facts(parsed))
        prefixes.update(parsed["env_var_prefixes"])
    prefix = app.get("route_prefix")
    import_path = app.get("import_path")
    return {
        "name": str(app.get("name", "")),
        "exists": exists,
        "owner": owner,
        "route_prefix": prefix if isinstance(prefix, str) else "",
        "overlapped_owners": sorted(set(overlapped_owners)),
        "import_path": import_path if isinstance(import_path, str) else "",
        "deployments": sorted(set(names)),
        "invoke_groups": sorted(set(invoke_groups)),
        "runtime_env_facts": sorted(facts),
        "env_var_prefixes": sorted(prefixes),
        "replica_milli_cpus": cpus,
        "replica_milli_gpus": gpus,
        "replica_memory": memory,
        "replica_resources": sorted(resources),
        "replica_resources_max_milli": most,
        "max_replicas": min(replicas if deployments else 1, _LONG_MAX),
    }


def new_serve_app_entity(attrs: dict[str, Any]) -> Entity:
    return Entity("NewServeApp", str(attrs["name"]) or "(unnamed)", attrs, IN_CLUSTER)
