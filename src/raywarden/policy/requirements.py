"""What pip and uv would install from a runtime_env: package lists read as their requirements-file parsers read
them, install options as the argv Ray builds, version pins as the requirement Ray spells. Classified for policies:
plain requirements from the configured index by name, everything else as an option or a direct reference."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from packaging.requirements import Requirement

# Longer lines are direct references without reading them further (a hashed requirement of a package with
# many wheels runs to a few KiB once its continuations are joined).
MAX_LINE = 64 * 1024
# PEP 508 parsing (packaging) costs up to milliseconds on long or deeply nested input: a requirement longer than
# this, or with more parentheses or commas than a real one has, is a direct reference without parsing.
MAX_REQUIREMENT = 256
# The work one runtime_env may cost, whatever the size of the body: a requirement counts REQUIREMENT_COST, any
# other line, word or conda spec one. Past it nothing more is read, and "unsupported:runtime_env.size" refuses it
# (about 1000 requirements, or 20000 words of options and hashes).
WORK_BUDGET = 20_000
REQUIREMENT_COST = 20
TOO_LARGE = "runtime_env.size"
# Values in facts are cut to this length; a cut value ends with a mark, so it never equals an uncut one.
MAX_SHOWN = 200
# pip's archive extensions (pip._internal.utils.filetypes) and uv's: a requirement named like an archive
# ("evil.whl") is installed from that file in the installer's working directory, not from the index.
ARCHIVE_SUFFIXES = (
    ".whl",
    ".zip",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz",
    ".tbz2",
    ".tar.xz",
    ".txz",
    ".tlz",
    ".tar.lz",
    ".tar.lzma",
    ".tar.zst",
    ".tzst",
)
# RFC 3986 userinfo (unreserved, pct-encoded, sub-delims, ":") before an "@": a credential, never needed by
# policies or audit records. Anything else before an "@" (a backslash...) is left as it is: URL parsers disagree
# on where such a host starts, and a masked form must never look like an allowed URL.
_USERINFO = re.compile(r"(?<=://)[A-Za-z0-9\-._~%!$&'()*+,;=:]*@")
_TOKEN = re.compile(r"\S+")
# The value of a per-requirement --hash: ALGORITHM:HEXDIGEST, which only narrows what pip accepts.
_HASH_VALUE = re.compile(r"(sha256|sha384|sha512):[0-9a-fA-F]+")
# First characters of a package list entry that need the full line reading (the empty string included).
_NOT_PLAIN = ("", "#", "-")


def shown(value: str) -> str:
    """A value as attributes carry it: credentials masked, long values cut."""
    if "@" in value:
        value = _USERINFO.sub("***@", value)
    return value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "\u2026"


class Packages:
    """Accumulates what pip, uv and conda's pip list would install, classified for policies."""

    __slots__ = ("budget", "direct", "names", "options", "unsupported")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.options: set[str] = set()
        self.direct: set[str] = set()
        self.unsupported: set[str] = set()
        self.budget = WORK_BUDGET

    def spend(self, units: int) -> bool:
        """Charges the work budget; False (and the runtime_env unsupported) once it is spent."""
        self.budget -= units
        if self.budget >= 0:
            return True
        self.unsupported.add(TOO_LARGE)
        return False

    def add_requirements(self, entries: list[Any], where: str) -> None:
        """A package list: Ray writes it into a requirements file, one entry per line (dependency_utils)."""
        try:
            text = "\n".join(entries)
        except TypeError:
            self.unsupported.add(where)  # Ray writes `entry + "\n"`: anything but strings fails, or worse
            return
        if "\\" in text:
            # A line continuation joins an entry with the next one: read the file as a whole.
            self._add_file(text)
            return
        for entry in entries:
            if self.budget < 0:
                return
            # The usual entry, one plain word ("torch==2.4.0"): printable (so no line break of any kind) and
            # without a space, it is one line of one word, which _add_line would classify as it stands.
            if " " not in entry and entry.isprintable() and entry[:1] not in _NOT_PLAIN:
                self._requirement(entry)
            else:
                for line in entry.splitlines():
                    self._add_line(line)

    def add_install_options(self, options: list[Any], where: str) -> None:
        """``pip_install_options`` / ``uv_pip_install_options``: each item is one argv item after ``-r FILE``."""
        for item in options:
            if not self.spend(1):
                return
            if type(item) is not str:
                self.unsupported.add(where)
            elif item.startswith("-"):
                self._option(item)
            else:
                self._requirement(item)  # a positional argument is one more requirement (or a path, a URL)

    def add_version_pin(self, installer: str, version: Any, where: str) -> None:
        """``pip_version`` / ``uv_version``: Ray installs the one argv item ``f"{installer}{version}"``."""
        if type(version) is str:
            self._requirement(installer + version)
        else:
            self.unsupported.add(where)

    def _add_file(self, text: str) -> None:
        # pip joins a line ending in "\" with the next one after stripping the backslashes (req_file.join_lines);
        # uv reads the pair as one line with whitespace between. Both readings are judged.
        lines = text.splitlines()
        if not self.spend(len(lines)):
            return
        for line in _pip_joined(lines):
            self._add_line(line)
        for line in _space_joined(lines):
            self._add_line(line)

    def _add_line(self, line: str) -> None:
        if not self.spend(1):
            return
        if len(line) > MAX_LINE:
            self.direct.add(shown(line))
            return
        text = strip_comment(line).strip()
        if not text:
            return
        if "$" in text:
            # pip expands ${NAME} in requirement files, Ray expands $NAME and ${NAME} for uv, from the install's
            # environment (env_vars included): what such a line installs is not in the request.
            self.direct.add(shown(text))
            return
        # pip takes the words before the first one that starts with "-" as the requirement and the rest as
        # options (req_file.break_args_options, split on spaces); splitting on all whitespace finds every
        # option word either installer could see.
        tokens = list(_TOKEN.finditer(text))
        if not self.spend(len(tokens)):
            return
        first = next((i for i, t in enumerate(tokens) if t.group().startswith("-")), len(tokens))
        if first:
            end = tokens[first].start() if first < len(tokens) else len(text)
            self._requirement(text[:end].rstrip())
        option: str | None = None
        for token in tokens[first:]:
            word = token.group()
            if word.startswith("-"):
                option = self._option(word)
            else:
                self._option_value(option, word)  # an option's value (a URL, a path, a hash)
                option = None

    def _option(self, word: str) -> str | None:
        """Records the option a word names and its attached value; returns it when its value may follow."""
        if word.startswith("--"):
            name, equals, value = word.partition("=")
        else:
            name, equals, value = word[:2], "", word[2:]  # "-ihttps://x": a short option and its value
        self.options.add(shown(name))
        if equals or value:
            self._option_value(name, value)
            return None
        return name

    def _option_value(self, option: str | None, value: str) -> None:
        if option == "--hash" and _HASH_VALUE.fullmatch(value):
            return
        self.direct.add(shown(value))

    def _requirement(self, text: str) -> None:
        self.budget -= REQUIREMENT_COST
        if self.budget < 0:
            self.unsupported.add(TOO_LARGE)
            return
        name = plain_requirement(text)
        if name is None:
            self.direct.add(shown(text))
        else:
            self.names.add(name)


def _pip_joined(lines: Iterable[str]) -> list[str]:
    joined: list[str] = []
    pending: list[str] = []
    for line in lines:
        comment = line.lstrip().startswith("#")
        if not line.endswith("\\") or comment:
            if comment:
                line = " " + line
            if pending:
                joined.append("".join([*pending, line]))
                pending = []
            else:
                joined.append(line)
        else:
            pending.append(line.strip("\\"))
    if pending:
        joined.append("".join(pending))
    return joined


def strip_comment(line: str) -> str:
    """The line without its comment, as pip's ``(^|\\s+)#.*$`` removes it (but without backtracking, and
    leaving the whitespace before the "#", which the caller strips)."""
    at = line.find("#")
    while at > 0 and not line[at - 1].isspace():
        at = line.find("#", at + 1)
    return line if at < 0 else line[:at]


def _space_joined(lines: Iterable[str]) -> list[str]:
    joined: list[str] = []
    pending: list[str] = []
    for line in lines:
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        joined.append(" ".join([*pending, line]))
        pending = []
    if pending:
        joined.append(" ".join(pending))
    return joined


def plain_requirement(text: str) -> str | None:
    """The normalised project name of a PEP 508 requirement from an index, or None for anything else."""
    return None if len(text) > MAX_REQUIREMENT else _plain_requirement_cached(text)


def _plain_requirement(text: str) -> str | None:
    if "$" in text or "/" in text or "\\" in text or ":" in text.split(";", 1)[0]:
        return None  # env var expansion, paths, URLs, VCS references
    if text.count("(") > 4 or text.count(",") > 16:
        return None  # deeper or longer than real requirements, and slow to parse
    try:
        req = Requirement(text)
    except ValueError:  # InvalidRequirement, and whatever else packaging refuses a string with
        return None
    name = req.name.lower()
    if req.url or name.endswith(ARCHIVE_SUFFIXES):
        return None
    return re.sub(r"[-_.]+", "-", name)


_plain_requirement_cached = functools.lru_cache(maxsize=4096)(_plain_requirement)
