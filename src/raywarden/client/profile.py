"""Client profiles under $RAYWARDEN_HOME/profiles/NAME: gateway URL, pinned access CA, key and certificate."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from raywarden.errors import ConfigError
from raywarden.files import ensure_private_dir, write_private, write_public
from raywarden.pki.certs import load_cert
from raywarden.pki.spiffe import check_name
from raywarden.state import raywarden_home


def profiles_dir() -> Path:
    return raywarden_home() / "profiles"


def _current_file() -> Path:
    return raywarden_home() / "current-profile"


@dataclass(frozen=True)
class Profile:
    name: str
    gateway_url: str
    identity: str
    # Set when this profile belongs to a cluster whose state dir is on this machine (the `init` admin):
    # such a profile can renew its own certificate with the access CA.
    state_dir: str | None = None

    @property
    def folder(self) -> Path:
        return profiles_dir() / self.name

    @property
    def cert_path(self) -> Path:
        return self.folder / "client.crt"

    @property
    def key_path(self) -> Path:
        return self.folder / "client.key"

    @property
    def ca_path(self) -> Path:
        return self.folder / "access-ca.crt"

    def certificate(self) -> x509.Certificate:
        return load_cert(self.cert_path)

    def save(self, *, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> None:
        ensure_private_dir(self.folder)
        write_private(self.key_path, key_pem)
        write_public(self.cert_path, cert_pem)
        write_public(self.ca_path, ca_pem)
        meta = {
            "name": self.name,
            "gateway_url": self.gateway_url,
            "identity": self.identity,
            "state_dir": self.state_dir,
        }
        write_private(self.folder / "profile.json", (json.dumps(meta, indent=2) + "\n").encode())

    def replace_certificate(self, *, key_pem: bytes, cert_pem: bytes) -> None:
        write_private(self.key_path, key_pem)
        write_public(self.cert_path, cert_pem)


def load_profile(name: str | None = None) -> Profile:
    name = name or os.environ.get("RAYWARDEN_PROFILE") or current_profile_name()
    if name is None:
        raise ConfigError("no profile selected", hint="run `raywarden init` (or `raywarden login`) first")
    check_name(name, "profile name")
    path = profiles_dir() / name / "profile.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"profile {name!r} does not exist", hint="see `raywarden profile list`") from None
    return Profile(meta["name"], meta["gateway_url"], meta["identity"], meta.get("state_dir"))


def load_profile_or_none(name: str) -> Profile | None:
    check_name(name, "profile name")
    if not (profiles_dir() / name / "profile.json").is_file():
        return None
    return load_profile(name)


def current_profile_name() -> str | None:
    try:
        return _current_file().read_text().strip() or None
    except FileNotFoundError:
        return None


def set_current(name: str) -> None:
    ensure_private_dir(raywarden_home())
    write_private(_current_file(), name.encode() + b"\n")


def list_profiles() -> list[Profile]:
    if not profiles_dir().is_dir():
        return []
    return [load_profile(p.name) for p in sorted(profiles_dir().iterdir()) if (p / "profile.json").is_file()]
