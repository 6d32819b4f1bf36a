"""Cedar attributes of jobs: what a submission asks for (runtime_env included) and what Ray says of a job.

The analysis is deliberately conservative: anything it cannot classify as a plain requirement from the
configured index lands in a set the default pack refuses (``pip_direct_refs``, ``pip_options``...).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

OWNER_KEY = "raywarden.owner"

# Ray 2.60 RuntimeEnv.known_fields (ray/runtime_env/runtime_env.py); anything else is a runtime_env plugin.
RAY_RUNTIME_ENV_FIELDS = frozenset({
    "py_modules", "py_executable", "java_jars", "working_dir", "conda", "pip", "uv", "container", "excludes",
    "env_vars", "_ray_release", "_ray_commit", "_inject_current_ray", "config", "worker_process_setup_hook",
    "_nsight", "_rocprof_sys", "image_uri",
})
_PIP_DICT_KEYS = {"pip": ("pip_install_options", "pip_version"), "uv": ("uv_pip_install_options", "uv_version")}
# Amounts in thousandths as a Cedar Long. Fractions are rounded up and huge or non-finite requests are
# clamped to the largest Long: both only ever make a request look bigger than it is.
_LONG_MAX = 2**63 - 1
# user:password@ in an index or VCS URL is a credential: policies and audit records never need it.
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_OPTION = re.compile(r"^(-[A-Za-z]|--[A-Za-z0-9][A-Za-z0-9\-_]*)")


def milli(value: float | int | None) -> int:
    """CPUs, GPUs or a custom resource amount in thousandths (Cedar ``Long``)."""
    if type(value) is int and 0 <= value <= 2**40:  # the usual whole number, exactly (bool is no int here)
        return value * 1000
    number = float(value or 0)
    if not math.isfinite(number) or number * 1000 >= _LONG_MAX:
        return _LONG_MAX
    return max(0, math.ceil(round(number * 1000, 6)))


class _Packages:
    """Accumulates what pip, uv and conda's pip list would install, classified for policies."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.options: set[str] = set()
        self.direct: set[str] = set()

    def add_lines(self, packages: Iterable[Any]) -> None:
        for entry in packages:
            if not isinstance(entry, str):
                self.direct.add(repr(entry)[:200])
                continue
            # Ray writes the list into a requirements file, one entry per line: an entry with a newline
            # (or a backslash continuation) smuggles further lines, so every line is judged on its own.
            for line in entry.replace("\\\r\n", " ").replace("\\\n", " ").splitlines():
                self._add_line(line)

    def _add_line(self, line: str) -> None:
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            return
        words = text.split()
        if len(words) == 1 and not text.startswith("-"):  # the usual single requirement, no options
            self._classify(text)
            return
        first_option = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        if first_option:
            self._classify(" ".join(words[:first_option]))
        for word in words[first_option:]:
            if word.startswith("-"):
                option = _OPTION.match(word)
                self.options.add(option.group(1) if option else word[:50])
            else:
                # The value of an option (an index URL, a find-links dir, an editable VCS checkout...).
                self.direct.add(_USERINFO.sub("***@", word)[:200])

    def _classify(self, text: str) -> None:
        name = _plain_requirement(text)
        if name is None:
            self.direct.add(_USERINFO.sub("***@", text)[:200])
        else:
            self.names.add(name)


@functools.lru_cache(maxsize=4096)
def _plain_requirement(text: str) -> str | None:
    """The normalised project name of a PEP 508 requirement from an index, or None for anything else."""
    if "$" in text or "/" in text or "\\" in text or ":" in text.split(";", 1)[0]:
        return None  # env var expansion, paths, URLs, VCS references
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    if req.url:
        return None
    return re.sub(r"[-_.]+", "-", req.name).lower()


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.isalnum() else "local"


def runtime_env_attrs(env: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``RuntimeEnv`` record of the schema, from a submission's runtime_env."""
    env = env or {}
    packages = _Packages()
    spec_files: set[str] = set()
    conda_channels: set[str] = set()
    conda_packages: set[str] = set()
    conda_options: set[str] = set()
    for installer in ("pip", "uv"):
        spec = env.get(installer)
        if spec is None:
            continue
        if isinstance(spec, str):
            spec_files.add(installer)  # a requirements file read from the node's disk
        elif isinstance(spec, list):
            packages.add_lines(spec)
        elif isinstance(spec, dict):
            listed = spec.get("packages", [])
            packages.add_lines(listed if isinstance(listed, list) else [listed])
            options_key, version_key = _PIP_DICT_KEYS[installer]
            options = spec.get(options_key) or []
            packages.add_lines(" ".join(str(o) for o in options).split("\n") if isinstance(options, list)
                               else [str(options)])
            if spec.get(version_key):
                # Ray installs f"pip{pip_version}": a version pin is a requirement like any other.
                packages.options.add(version_key)
                packages._classify(f"{installer}{spec[version_key]}")
            unknown = set(spec) - {"packages", options_key, version_key, f"{installer}_check"}
            packages.options.update(str(k) for k in unknown)
        else:
            packages.direct.add(repr(spec)[:200])
    conda = env.get("conda")
    if isinstance(conda, str):
        spec_files.add("conda")  # a named env or a YAML file on the node
    elif isinstance(conda, dict):
        conda_options.update(str(k) for k in conda if k not in ("name", "dependencies", "channels"))
        channels = conda.get("channels") or []
        conda_channels.update(str(c) for c in (channels if isinstance(channels, list) else [channels]))
        deps = conda.get("dependencies") or []
        for dep in deps if isinstance(deps, list) else [deps]:
            if isinstance(dep, dict):
                for key, value in dep.items():
                    if key == "pip" and isinstance(value, list):
                        packages.add_lines(value)
                    else:
                        conda_options.add(f"dependencies.{key}")
            elif isinstance(dep, str):
                channel, sep, _ = dep.partition("::")
                if sep:
                    conda_channels.add(channel)
                if "://" in dep or "/" in dep:
                    conda_channels.add(dep[:200])  # an explicit package URL is a channel of its own
                else:
                    conda_packages.add(dep.split("::")[-1].split()[0].split("=")[0].lower())
    elif conda is not None:
        conda_options.add(repr(conda)[:200])

    uris: list[str] = []
    working_dir = env.get("working_dir")
    if working_dir is not None:
        uris.append(str(working_dir))
    for key in ("py_modules", "java_jars"):
        listed = env.get(key) or []
        uris.extend(str(u) for u in (listed if isinstance(listed, list) else [listed]))
    if env.get("_ray_release"):
        packages.direct.add(str(env["_ray_release"])[:200])  # a Ray wheel fetched from a URL
    env_vars = env.get("env_vars") or {}
    names = {str(k) for k in env_vars} if isinstance(env_vars, dict) else {"(not a mapping)"}
    container = env.get("container")
    image = env.get("image_uri") or (container.get("image") if isinstance(container, dict) else None)
    return {
        "keys": sorted(str(k) for k in env),
        "plugins": sorted(str(k) for k in env if k not in RAY_RUNTIME_ENV_FIELDS),
        "pip_packages": sorted(packages.names),
        "pip_options": sorted(packages.options),
        "pip_direct_refs": sorted(packages.direct),
        "spec_files": sorted(spec_files),
        "conda_channels": sorted(conda_channels),
        "conda_packages": sorted(conda_packages),
        "conda_options": sorted(conda_options),
        "working_dir": str(working_dir or ""),
        "py_modules": sorted(str(u) for u in (env.get("py_modules") or []) if isinstance(u, str)),
        "uri_schemes": sorted({_scheme(u) for u in uris}),
        "env_var_names": sorted(names),
        "env_var_prefixes": sorted({n.split("_", 1)[0].upper() for n in names}),
        "container": bool(container) or bool(env.get("image_uri")),
        "image": str(image or ""),
    }


# The sets of the RuntimeEnv record that runtime_env_facts flattens, with the tag of their facts.
_FACT_SETS = (("key", "keys"), ("plugin", "plugins"), ("pip_option", "pip_options"),
              ("pip_direct_ref", "pip_direct_refs"), ("spec_file", "spec_files"), ("conda_channel", "conda_channels"),
              ("conda_option", "conda_options"), ("uri_scheme", "uri_schemes"))


def runtime_env_facts(env: Mapping[str, Any]) -> list[str]:
    """Everything a ``RuntimeEnv`` record says beyond package names, as one flat set of ``"tag:value"`` strings.

    Cedar pays for every attribute and every set it parses, empty or not, so the default pack reads this one
    set (an allowlist: ``[...].containsAll(resource.runtime_env_facts)``) rather than ten attributes of the
    nested record. Tags contain no ``:``, so a fact names its tag and value unambiguously.
    """
    facts = [f"{tag}:{value}" for tag, name in _FACT_SETS for value in env[name]]
    if env["container"]:
        facts.append("container")
    return facts


def submission_attrs(body: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The ``NewJob`` attributes of a job submission body (already validated by gateway.jobs)."""
    resources = body.get("entrypoint_resources") or {}
    amounts = [float(v) for v in resources.values()] if isinstance(resources, dict) else []
    env = runtime_env_attrs(body.get("runtime_env"))
    return {
        "submission_id": str(body.get("submission_id") or body.get("job_id") or ""),
        "owner": owner,
        "entrypoint": str(body.get("entrypoint") or ""),
        "entrypoint_milli_cpus": milli(body.get("entrypoint_num_cpus")),
        "entrypoint_milli_gpus": milli(body.get("entrypoint_num_gpus")),
        "entrypoint_memory": min(int(body.get("entrypoint_memory") or 0), _LONG_MAX),
        "entrypoint_resources": sorted(str(k) for k in resources),
        "entrypoint_resources_max_milli": milli(max(amounts, default=0.0)),
        "label_selector_keys": sorted(str(k) for k in (body.get("entrypoint_label_selector") or {})),
        "metadata_keys": sorted(str(k) for k in (body.get("metadata") or {})),
        "runtime_env": env,
        "runtime_env_facts": runtime_env_facts(env),
        "env_var_prefixes": env["env_var_prefixes"],
    }


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
