"""A job's runtime_env as Ray's own validators and plugins read it (ray.runtime_env.RuntimeEnv, Ray 2.52 to 2.60),
as the ``RuntimeEnv`` record of the Cedar schema and its flat ``runtime_env_facts``.

Every field is analysed completely or marked: a value of a form the analysis does not model lands in
``unsupported``, a field Ray does not define in ``plugins``, and the default pack refuses both. docs/policy.md
lists every fact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from raywarden.policy.conda_specs import CondaEnv
from raywarden.policy.requirements import Packages, shown

# Ray's RuntimeEnv.known_fields (ray/runtime_env/runtime_env.py); anything else is a runtime_env plugin.
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
# The keys Ray's validators accept in the pip and uv dicts, by role.
_INSTALLER_KEYS = {
    "pip": {"check": "pip_check", "version": "pip_version", "options": "pip_install_options"},
    "uv": {"check": "uv_check", "version": "uv_version", "options": "uv_pip_install_options"},
}
# Lists and maps longer than this (env vars, modules, log files, excludes) are not read: "unsupported".
MAX_ITEMS = 1000
# RuntimeEnvConfig.setup_timeout_seconds is an int32 in Ray's protocol: -1 (no timeout) or a positive count.
_INT32_MAX = 2**31 - 1
# The sets that runtime_env_facts flattens, with the tag of their facts.
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
_OPTIONAL_FACT_SETS = (("conda_env", "conda_envs"), ("log_file", "log_files"), ("unsupported", "unsupported"))


class _Reading:
    """One runtime_env being read: the record, and the sets each field adds to it (made when first needed: a
    submission uses a few fields, and the gateway builds this on every one)."""

    __slots__ = ("_conda", "_packages", "attrs", "found")

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.attrs = attrs
        self.found: dict[str, set[str]] = {}
        self._packages: Packages | None = None
        self._conda: CondaEnv | None = None

    def add(self, name: str, value: str) -> None:
        values = self.found.get(name)
        if values is None:
            values = self.found[name] = set()
        values.add(value)

    def unsupported(self, where: str) -> None:
        self.add("unsupported", where)

    @property
    def packages(self) -> Packages:
        if self._packages is None:
            self._packages = Packages()
        return self._packages

    @property
    def conda(self) -> CondaEnv:
        if self._conda is None:
            self._conda = CondaEnv(self.packages)
        return self._conda

    def finish(self) -> dict[str, Any]:
        found = self.found
        if self._packages is not None:
            for name, values in (
                ("pip_packages", self._packages.names),
                ("pip_options", self._packages.options),
                ("pip_direct_refs", self._packages.direct),
                ("unsupported", self._packages.unsupported),
            ):
                if values:
                    found[name] = found.get(name, set()) | values
        if self._conda is not None:
            for name, values in (
                ("conda_channels", self._conda.channels),
                ("conda_packages", self._conda.names),
                ("conda_options", self._conda.options),
            ):
                if values:
                    found[name] = values
        attrs = self.attrs
        for name, values in found.items():
            attrs[name] = sorted(values)
        names = found.get("env_var_names")
        if names:
            attrs["env_var_prefixes"] = sorted({env_var_prefix(n) for n in names})
        return attrs


def runtime_env_attrs(env: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``RuntimeEnv`` record of the schema, from a submission's runtime_env."""
    attrs: dict[str, Any] = {
        "keys": [],
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
    if type(env) is not dict and not isinstance(env, Mapping):
        attrs["unsupported"] = ["runtime_env"]
        return attrs
    attrs["keys"] = sorted(map(str, env))
    if not env.keys() <= RAY_RUNTIME_ENV_FIELDS:
        attrs["plugins"] = sorted(map(str, env.keys() - RAY_RUNTIME_ENV_FIELDS))
    reading = _Reading(attrs)
    for key, value in env.items():
        read = _FIELD_READERS.get(key)
        if read is not None and value is not None:  # Ray drops a field set to None
            read(value, reading)
    return reading.finish()


def env_var_prefix(name: str) -> str:
    """The part of an env var name the pack's denylist reads: up to the first "_" after leading ones, upper-cased
    (``_PIP_STANDALONE_CERT`` is read as ``PIP``)."""
    return name.lstrip("_").split("_", 1)[0].upper()


def runtime_env_facts(env: Mapping[str, Any]) -> list[str]:
    """Everything a ``RuntimeEnv`` record says beyond package names, as one flat set of ``"tag:value"`` strings.

    Cedar pays for every attribute and every set it parses, empty or not, so the default pack reads this one
    set (an allowlist: ``[...].containsAll(resource.runtime_env_facts)``) rather than the attributes of the
    nested record. Tags contain no ``:``, so a fact names its tag and value unambiguously.
    """
    facts = []
    for tag, name in _FACT_SETS:
        values = env[name]
        if values:
            facts.extend([f"{tag}:{value}" for value in values])
    for tag, name in _OPTIONAL_FACT_SETS:
        values = env.get(name)
        if values:
            facts.extend([f"{tag}:{value}" for value in values])
    if env["container"]:
        facts.append("container")
    return facts


# -- one reader per field Ray defines; the fields without one (py_executable, _nsight...) are refused by key --


def _read_installer(installer: str) -> Callable[[Any, _Reading], None]:
    keys = _INSTALLER_KEYS[installer]
    known = frozenset({"packages", *keys.values()})

    def read(value: Any, reading: _Reading) -> None:
        packages = reading.packages
        if isinstance(value, str):
            reading.add("spec_files", installer)  # a requirements file, read from the disk of Ray's head node
        elif isinstance(value, list):
            packages.add_requirements(value, installer)
        elif isinstance(value, dict):
            if not value.keys() <= known:
                for key in value.keys() - known:
                    reading.unsupported(f"{installer}.{shown(str(key))}")  # Ray refuses other keys
            listed = value.get("packages")
            if isinstance(listed, list):
                packages.add_requirements(listed, f"{installer}.packages")
            elif isinstance(listed, str) and installer == "pip":
                reading.add("spec_files", installer)  # validation.py reads a string as a requirements file path
            else:
                reading.unsupported(f"{installer}.packages")
            if keys["check"] in value and type(value[keys["check"]]) is not bool:
                reading.unsupported(f"{installer}.{keys['check']}")
            if keys["version"] in value:
                packages.add_version_pin(installer, value[keys["version"]], f"{installer}.{keys['version']}")
            if keys["options"] in value:
                options = value[keys["options"]]
                where = f"{installer}.{keys['options']}"
                if isinstance(options, list):
                    packages.add_install_options(options, where)
                else:
                    reading.unsupported(where)
        else:
            reading.unsupported(installer)

    return read


def _read_conda(value: Any, reading: _Reading) -> None:
    if isinstance(value, str):
        if PurePosixPath(value).suffix in (".yaml", ".yml"):
            reading.add("spec_files", "conda")  # an environment file, read from the disk of Ray's head node
        else:
            reading.add("conda_envs", shown(value))  # an existing env on the node, by name or directory
    elif isinstance(value, dict):
        reading.conda.add_env(value)
    else:
        reading.unsupported("conda")


def _scheme(uri: str) -> str:
    """The protocol Ray reads from a working_dir / py_modules / java_jars value ("local" for a path)."""
    if uri.startswith("gcs://"):
        return "gcs"  # the usual case: a package uploaded through the gateway
    try:
        scheme = urlparse(uri).scheme  # what ray._private.path_utils.is_path and parse_uri read
    except ValueError:
        return "invalid"
    return scheme or "local"


def _read_working_dir(value: Any, reading: _Reading) -> None:
    if isinstance(value, str):
        reading.add("uri_schemes", _scheme(value))
        reading.attrs["working_dir"] = shown(value)
    else:
        reading.unsupported("working_dir")


def _read_uri_list(field: str) -> Callable[[Any, _Reading], None]:
    def read(value: Any, reading: _Reading) -> None:
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            reading.unsupported(field)
            return
        for uri in value:
            if isinstance(uri, str):
                reading.add("uri_schemes", _scheme(uri))
                if field == "py_modules":
                    reading.add("py_modules", shown(uri))
            else:
                reading.unsupported(field)

    return read


def _read_env_vars(value: Any, reading: _Reading) -> None:
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        reading.unsupported("env_vars")
        return
    for name in value:
        reading.add("env_var_names", shown(str(name)))
    if not all(type(v) is str for v in value.values()):
        reading.unsupported("env_vars")  # Ray refuses other values


def _read_config(value: Any, reading: _Reading) -> None:
    """RuntimeEnvConfig: setup_timeout_seconds, eager_install, log_files; Ray ignores other keys."""
    if not isinstance(value, dict):
        reading.unsupported("config")
        return
    for key, item in value.items():
        if key == "setup_timeout_seconds":
            if type(item) is not int or not (item == -1 or 0 < item <= _INT32_MAX):
                reading.unsupported("config.setup_timeout_seconds")
        elif key == "eager_install":
            if type(item) is not bool:
                reading.unsupported("config.eager_install")
        elif key == "log_files":
            # Files Ray's runtime-env agent appends its setup log to, os.path.join(log_dir, name): an absolute
            # path or ".." writes outside the log directory, and any name can be another job's log file.
            if isinstance(item, list) and len(item) <= MAX_ITEMS and all(type(f) is str for f in item):
                for name in item:
                    reading.add("log_files", shown(name))
            elif item is not None:
                reading.unsupported("config.log_files")
        else:
            reading.unsupported(f"config.{shown(str(key))}")


def _read_string_field(field: str) -> Callable[[Any, _Reading], None]:
    def read(value: Any, reading: _Reading) -> None:
        if type(value) is not str:
            reading.unsupported(field)

    return read


def _read_excludes(value: Any, reading: _Reading) -> None:
    # Patterns of files the client leaves out of its upload: nothing the cluster installs or reads.
    if not isinstance(value, list) or len(value) > MAX_ITEMS or not all(type(p) is str for p in value):
        reading.unsupported("excludes")


def _read_container(value: Any, reading: _Reading) -> None:
    if value:
        image = value.get("image") if isinstance(value, dict) else None
        reading.attrs["container"], reading.attrs["image"] = True, shown(image) if isinstance(image, str) else ""


def _read_image_uri(value: Any, reading: _Reading) -> None:
    if value:
        reading.attrs["container"], reading.attrs["image"] = True, shown(value) if isinstance(value, str) else ""


_FIELD_READERS: dict[str, Callable[[Any, _Reading], None]] = {
    "pip": _read_installer("pip"),
    "uv": _read_installer("uv"),
    "conda": _read_conda,
    "working_dir": _read_working_dir,
    "py_modules": _read_uri_list("py_modules"),
    "java_jars": _read_uri_list("java_jars"),
    "env_vars": _read_env_vars,
    "config": _read_config,
    "excludes": _read_excludes,
    "worker_process_setup_hook": _read_string_field("worker_process_setup_hook"),  # a module name for workers
    "_ray_commit": _read_string_field("_ray_commit"),  # set by Ray's SDK; read by nothing in Ray
    "container": _read_container,
    "image_uri": _read_image_uri,
}
