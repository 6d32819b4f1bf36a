"""A conda environment's channels and packages, read as conda reads an environment file and its match specs
(conda.models.match_spec._parse_spec_str), classified for policies."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from raywarden.policy.requirements import Packages, shown

# conda's package files (conda.common.path.is_package_file): a spec naming one is a download, not a package name.
_PACKAGE_FILE_SUFFIXES = (".tar.bz2", ".conda")
# Longer specs are not parsed (no package name needs it, and conda's patterns backtrack on long input).
MAX_SPEC = 512
# Step 3 and 4 of conda's parser find the last [...] and (...) sections with r".*(?:(\[.*\]))" (found here
# without backtracking, see _section), then their key=value pairs.
_KEY_VALUE = re.compile(r'([a-zA-Z0-9_-]+?)=(["\']?)([^\'"]*?)(\2)(?:[, ]|$)')
# Step 6: the name, then version and build.
_NAME_REST = re.compile(r"([^ =<>!~]+)?([><!=~ ].+)?")
# A package name as conda channels spell them; anything else (globs, paths) is not one package of the index.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
# Bracket fields that select a version or build of the named package; every other one is a fact.
_VERSION_FIELDS = frozenset({"version", "build", "build_number"})


@dataclass
class CondaEnv:
    """What a ``conda`` dict would install: conda packages, channels, other settings, and its pip list."""

    packages: Packages
    names: set[str] = field(default_factory=set)
    channels: set[str] = field(default_factory=set)
    options: set[str] = field(default_factory=set)

    def add_env(self, env: dict[str, Any]) -> None:
        """The dict Ray writes out as the environment.yml of ``conda env create --prefix``."""
        for key, value in env.items():
            if key == "name":
                # The name of the file's env; `--prefix` wins over it. Only a string is a name.
                if type(value) is not str:
                    self.packages.unsupported.add("conda.name")
            elif key == "channels":
                if isinstance(value, list) and len(value) <= MAX_SPEC and all(type(c) is str for c in value):
                    self.channels.update(shown(c) for c in value)
                else:
                    self.packages.unsupported.add("conda.channels")
            elif key == "dependencies":
                if isinstance(value, list):
                    for dep in value:
                        if self.packages.budget < 0:
                            return
                        self._add_dependency(dep)
                else:
                    self.packages.unsupported.add("conda.dependencies")
            else:
                self.options.add(shown(str(key)))  # variables, prefix...: settings of the env beyond its packages

    def _add_dependency(self, dep: Any) -> None:
        if type(dep) is str:
            self.add_spec(dep)
        elif isinstance(dep, dict):
            for key, value in dep.items():
                if key != "pip":
                    self.options.add(f"dependencies.{shown(str(key))}")
                elif isinstance(value, list):
                    # conda writes these to a requirements file and runs `pip install -r` on it.
                    self.packages.add_requirements(value, "conda.dependencies.pip")
                else:
                    self.packages.unsupported.add("conda.dependencies.pip")
        else:
            self.packages.unsupported.add("conda.dependencies")

    def add_spec(self, spec: str) -> None:
        """One match spec: ``(channel(/subdir)::)name(version(build))([key=value,...])``."""
        if not self.packages.spend(1):
            return
        if spec.endswith("@"):  # a "feature@" spec selects packages by feature, from anywhere
            self.options.add("match_spec.track_features")
            return
        if len(spec) > MAX_SPEC or not spec.isprintable():
            self.options.add("match_spec.invalid")  # and "." in conda's patterns stops at a line break
            return
        # conda drops a "#" comment and an " if " condition; neither has a place in a plain spec (YAML comments
        # are gone before Ray sees the env), and what conda does with them has changed before.
        for marker, fact in (
            ("#", "match_spec.comment"),
            (" if ", "match_spec.condition"),
            ("$", "match_spec.env_var"),
        ):
            if marker in spec:
                self.options.add(fact)
                return
        text = spec.strip()
        if text.endswith(_PACKAGE_FILE_SUFFIXES):
            # A package file or URL (step 2): a download of its own, like a channel.
            self.channels.add(shown(text))
            return
        section = _section(text, "[", "]")
        if section:
            text = text.replace(section, "")
            self._bracket_fields(section[1:-1])
        section = _section(text, "(", ")")
        if section:
            text = text.replace(section, "")
            self.options.add("match_spec.parens")  # (optional), (target=...)
        parts = text.rsplit(":", 2)
        if len(parts) == 3:
            if parts[0]:
                self.channels.add(shown(parts[0]))  # "channel::name", "channel/subdir::name", "URL::name"
            if parts[1]:
                self.options.add("match_spec.namespace")
        elif len(parts) == 2:
            self.options.add("match_spec.namespace")
        found = _NAME_REST.match(parts[-1])
        name = found.group(1) if found else None
        if name and _PLAIN_NAME.fullmatch(name):
            self.names.add(name.lower())
        else:
            self.options.add("match_spec.name")  # no name, a glob or a path: not one package of the index

    def _bracket_fields(self, section: str) -> None:
        for match in _KEY_VALUE.finditer(section):
            key, value = match.group(1), match.group(3)
            if key in ("channel", "url"):
                self.channels.add(shown(value))  # a package URL is a channel of its own
            elif key not in _VERSION_FIELDS:
                self.options.add(f"match_spec.{shown(key)}")
        if _KEY_VALUE.sub("", section).strip(", "):
            # conda ignores what its key=value pattern does not match; nothing unread is let through here.
            self.options.add("match_spec.brackets")


def _section(text: str, opening: str, closing: str) -> str:
    """What ``re.match(r".*(?:(\\[.*\\]))", text).group(1)`` finds in a line: from the last opening before the last
    closing to that closing."""
    end = text.rfind(closing)
    start = text.rfind(opening, 0, end) if end >= 0 else -1
    return text[start : end + 1] if start >= 0 else ""
