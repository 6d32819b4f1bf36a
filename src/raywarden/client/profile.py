"""Client profiles under $RAYWARDEN_HOME/profiles/NAME: gateway URL, pinned access CA, key and certificate."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from raywarden.errors import ConfigError
from raywarden.files import ensure_private_dir, write_private, write_public
from raywarden.pki.certs import cert_pem, load_cert
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
        """The access CAs this profile trusts, as one PEM file: the current CA first, then the previous one while
        a CA rotation overlaps them. Stock Ray tools take it as ``--verify``."""
        return self.folder / "access-ca.crt"

    def trusted_cas(self) -> list[x509.Certificate]:
        try:
            found = x509.load_pem_x509_certificates(self.ca_path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"profile {self.name!r} has no CA file", hint="log in again") from None
        except ValueError:
            raise ConfigError(f"{self.ca_path} is not a PEM certificate file", hint="log in again") from None
        return found

    def replace_cas(self, cas: list[x509.Certificate]) -> None:
        write_public(self.ca_path, b"".join(cert_pem(c) for c in cas))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (``flock``): two commands at once renew the certificate only once."""
        ensure_private_dir(self.folder)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def certificate(self) -> x509.Certificate:
        return load_cert(self.cert_path)

    def save(self, *, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> None:
        ensure_private_dir(self.folder)
        write_private(self.key_path, key_pem)
        write_public(self.cert_path, cert_pem)
        write_public(self.ca_path, ca_pem)
        self.token_cache_path.unlink(missing_ok=True)
        self.write_meta()

    def write_meta(self) -> None:
        meta = {
            "name": self.name,
            "gateway_url": self.gateway_url,
            "identity": self.identity,
            "state_dir": self.state_dir,
        }
        write_private(self.folder / "profile.json", (json.dumps(meta, indent=2) + "\n").encode())

    @property
    def token_cache_path(self) -> Path:
        """The last bearer token the CLI obtained for `raywarden job` (0600; reused until close to expiry)."""
        return self.folder / "token.json"

    def replace_certificate(self, *, key_pem: bytes, cert_pem: bytes) -> None:
        write_private(self.key_path, key_pem)
        write_public(self.cert_path, cert_pem)
        # A token obtained with the old certificate is not ours to keep using after a renewal.
        self.token_cache_path.unlink(missing_ok=True)


def load_profile(name: str | None = None) -> Profile:
    name = name or os.environ.get("RAYWARDEN_PROFILE") or current_profile_name()
    if name is None:
        others = [p.name for p in profiles_dir().iterdir()] if profiles_dir().is_dir() else []
        hint = (
            f"pick one with `raywarden profile use NAME` ({', '.join(sorted(others))}) or pass --profile NAME"
            if others
            else "run `raywarden init` (or `raywarden login`) first"
        )
        raise ConfigError("no profile selected", hint=hint)
    check_name(name, "profile name")
    path = profiles_dir() / name / "profile.json"
    try:
        meta = json.loads(path.read_text())
        return Profile(name, str(meta["gateway_url"]), str(meta["identity"]), meta.get("state_dir"))
    except FileNotFoundError:
        raise ConfigError(f"profile {name!r} does not exist", hint="see `raywarden profile list`") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"profile {name!r} is damaged ({path} is unreadable)",
            hint=f"`raywarden profile delete {name}` and log in again",
        ) from None


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


def clear_current() -> None:
    _current_file().unlink(missing_ok=True)


def profile_names() -> list[str]:
    """Names of the profile folders, including damaged ones (which `load_profile` refuses)."""
    if not profiles_dir().is_dir():
        return []
    return sorted(p.name for p in profiles_dir().iterdir() if p.is_dir() and not p.name.startswith("."))


def list_profiles() -> list[Profile]:
    if not profiles_dir().is_dir():
        return []
    return [load_profile(p.name) for p in sorted(profiles_dir().iterdir()) if (p / "profile.json").is_file()]


def delete_profile(profile: Profile) -> bool:
    """Remove the profile's folder (key, certificate, CA, token). Returns True when it was the current one."""
    was_current = current_profile_name() == profile.name
    shutil.rmtree(profile.folder)
    if was_current:
        clear_current()
    return was_current


def rename_profile(old: str, new: str) -> Profile:
    profile = load_profile(old)
    check_name(new, "profile name")
    if (profiles_dir() / new).exists():
        raise ConfigError(f"profile {new!r} already exists", hint="pick another name, or delete that profile first")
    was_current = current_profile_name() == old
    os.rename(profile.folder, profiles_dir() / new)
    renamed = Profile(new, profile.gateway_url, profile.identity, profile.state_dir)
    renamed.write_meta()
    if was_current:
        set_current(new)
    return renamed
