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
RAY_RUNTIME_ENV_FIELDS = frozenset(
    {
        "py_modules",
        "py_executable",
        "java_jars",
        "working_dir",
        "conda",
        "pip",
        "uv",
        "container",
        "excludes",
        "env_vars",
        "_ray_release",
        "_ray_commit",
        "_inject_current_ray",
        "config",
        "worker_process_setup_hook",
        "_nsight",
        "_rocprof_sys",
        "image_uri",
    }
)
_PIP_DICT_KEYS = {"pip": ("pip_install_options", "pip_version"), "uv": ("uv_pip_install_options", "uv_version")}
_PIP_DICT_KNOWN = {
    installer: frozenset({"packages", *keys, f"{installer}_check"}) for installer, keys in _PIP_DICT_KEYS.items()
}
# Amounts in thousandths as a Cedar Long. Fractions are rounded up and huge or non-finite requests are
# clamped to the largest Long: both only ever make a request look bigger than it is.
_LONG_MAX = 2**63 - 1
# user:password@ in an index or VCS URL is a credential: policies and audit records never need it.
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_OPTION = re.compile(r"^(-[A-Za-z]|--[A-Za-z0-9][A-Za-z0-9\-_]*)")
# First characters of a package list entry that need _add_line's full reading (the empty string included).
_NOT_PLAIN = ("", "#", "-")


def milli(value: float | int | None) -> int:
    """CPUs, GPUs or a custom resource amount in thousandths (Cedar ``Long``)."""
    if type(value) is int and 0 <= value <= 2**40:  # the usual whole number, exactly (bool is no int here)
        return value * 1000
    if not value:  # None, 0, 0.0: nothing asked
        return 0
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
            # The usual entry, one plain word ("torch==2.4.0"): printable (so no line break of any kind) and
            # without a space, it is one line of one word, which _add_line would classify as it stands.
            if type(entry) is str and " " not in entry and entry.isprintable() and entry[:1] not in _NOT_PLAIN:
                name = _plain_requirement(entry)
                if name is None:
                    self.direct.add(_USERINFO.sub("***@", entry)[:200])
                else:
                    self.names.add(name)
                continue
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
    # Every field starts empty and only the parts present are read: a submission uses a few of them, and the
    # gateway builds this record on every submission.
    attrs: dict[str, Any] = {
        "keys": sorted(map(str, env)),
        "plugins": [],
        "pip_packages": [],
        "pip_options": [],
        "pip_direct_refs": [],
        "spec_files": [],
        "conda_channels": [],
        "conda_packages": [],
        "conda_options": [],
        "working_dir": "",
        "py_modules": [],
        "uri_schemes": [],
        "env_var_names": [],
        "env_var_prefixes": [],
        "container": False,
        "image": "",
    }
    if not env:
        return attrs
    plugins = env.keys() - RAY_RUNTIME_ENV_FIELDS
    if plugins:
        attrs["plugins"] = sorted(map(str, plugins))
    if "pip" in env or "uv" in env or "conda" in env or "_ray_release" in env:
        _installers(env, attrs)
    schemes: set[str] = set()
    working_dir = env.get("working_dir")
    if working_dir is not None:
        schemes.add(_scheme(str(working_dir)))
        attrs["working_dir"] = str(working_dir or "")
    for key in ("py_modules", "java_jars"):
        listed = env.get(key)
        if listed:
            schemes.update(_scheme(str(u)) for u in (listed if isinstance(listed, list) else [listed]))
    if schemes:
        attrs["uri_schemes"] = sorted(schemes)
    py_modules = env.get("py_modules")
    if py_modules:
        attrs["py_modules"] = sorted(str(u) for u in py_modules if isinstance(u, str))
    env_vars = env.get("env_vars")
    if env_vars:
        names = attrs["env_var_names"] = sorted(
            set(map(str, env_vars)) if isinstance(env_vars, dict) else {"(not a mapping)"}
        )
        attrs["env_var_prefixes"] = sorted({n.split("_", 1)[0].upper() for n in names})
    container = env.get("container")
    image_uri = env.get("image_uri")
    if container or image_uri:
        image = image_uri or (container.get("image") if isinstance(container, dict) else None)
        attrs["container"], attrs["image"] = True, str(image or "")
    return attrs


def _installers(env: Mapping[str, Any], attrs: dict[str, Any]) -> None:
    """The pip, uv, conda and _ray_release parts of ``runtime_env_attrs``."""
    packages = _Packages()
    spec_files: set[str] = set()
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
            options = spec.get(options_key)
            if options:  # none at all is the usual case
                packages.add_lines(
                    " ".join(str(o) for o in options).split("\n") if isinstance(options, list) else [str(options)]
                )
            if spec.get(version_key):
                # Ray installs f"pip{pip_version}": a version pin is a requirement like any other.
                packages.options.add(version_key)
                packages._classify(f"{installer}{spec[version_key]}")
            known = _PIP_DICT_KNOWN[installer]
            if not spec.keys() <= known:
                packages.options.update(str(k) for k in spec if k not in known)
        else:
            packages.direct.add(repr(spec)[:200])
    conda_channels: set[str] = set()
    conda_packages: set[str] = set()
    conda_options: set[str] = set()
    conda = env.get("conda")
    if conda is None:
        pass
    elif isinstance(conda, str):
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
    else:
        conda_options.add(repr(conda)[:200])
    if env.get("_ray_release"):
        packages.direct.add(str(env["_ray_release"])[:200])  # a Ray wheel fetched from a URL
    for name, found in (
        ("pip_packages", packages.names),
        ("pip_options", packages.options),
        ("pip_direct_refs", packages.direct),
        ("spec_files", spec_files),
        ("conda_channels", conda_channels),
        ("conda_packages", conda_packages),
        ("conda_options", conda_options),
    ):
        if found:
            attrs[name] = sorted(found)


# The sets of the RuntimeEnv record that runtime_env_facts flattens, with the tag of their facts.
_FACT_SETS = (
    ("key", "keys"),
    ("plugin", "plugins"),
    ("pip_option", "pip_options"),
    ("pip_direct_ref", "pip_direct_refs"),
    ("spec_file", "spec_files"),
    ("conda_channel", "conda_channels"),
    ("conda_option", "conda_options"),
    ("uri_scheme", "uri_schemes"),
)


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
    """The ``NewJob`` attributes of a job submission body (already validated by gateway.jobs).

    GPUs, memory and custom resources, which few submissions ask for, are optional in the schema and left out
    when nothing is asked (0, no resources): Cedar parses every value it is given at a few microseconds each,
    and the default pack reads an absent amount as 0 and absent resources as none.
    """
    get = body.get
    resources = get("entrypoint_resources")
    memory = get("entrypoint_memory")
    selector = get("entrypoint_label_selector")
    metadata = get("metadata")
    env = runtime_env_attrs(get("runtime_env"))
    # Absent and empty fields, the usual case, skip the work: the gateway builds this on every submission.
    attrs: dict[str, Any] = {
        "submission_id": str(get("submission_id") or get("job_id") or ""),
        "owner": owner,
        "entrypoint": str(get("entrypoint") or ""),
        "entrypoint_milli_cpus": milli(get("entrypoint_num_cpus")),
    }
    gpus = milli(get("entrypoint_num_gpus"))
    if gpus:
        attrs["entrypoint_milli_gpus"] = gpus
    if memory and (memory := min(int(memory), _LONG_MAX)):
        attrs["entrypoint_memory"] = memory
    if resources:
        attrs["entrypoint_resources"] = sorted(map(str, resources))
        if isinstance(resources, dict) and (most := milli(max(float(v) for v in resources.values()))):
            attrs["entrypoint_resources_max_milli"] = most
    attrs["label_selector_keys"] = sorted(map(str, selector)) if selector else []
    attrs["metadata_keys"] = sorted(map(str, metadata)) if metadata else []
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
