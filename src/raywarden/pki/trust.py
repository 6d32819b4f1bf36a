"""The head's trust files during and between CA rotations (docs/credentials.md, "CA rotation").

For each role (``access``, ``internal``), in the state dir's ``pki/`` folder:

- ``ROLE-ca.crt`` / ``.key``: the current CA, the one every signer loads;
- ``ROLE-ca-previous.crt`` / ``.key``: the CA it replaced, still trusted until the rotation finishes;
- ``ROLE-ca-next.crt`` / ``.key`` (internal only): a successor published in the bundle before it signs;
- ``ROLE-ca-bundle.pem``: every CA trusted now, whenever that is more than the current one
  (``state.trusted_ca_file`` picks it);
- ``ROLE-ca-rollovers.json``: every rollover statement ever made (pki/rollover.py), kept for good, so that a
  client pinning any earlier CA can follow the chain;
- ``ca-rotation.json``: which rotation is under way, since when, and the finished ones.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raywarden.errors import ConfigError, PKIError
from raywarden.files import write_private, write_public
from raywarden.pki.ca_keys import CertificateAuthority, Role, ca_lock
from raywarden.pki.certs import cert_pem, fingerprint, load_cert
from raywarden.pki.rollover import Rollover, statements_from_json
from raywarden.state import StateDir

ROTATION_FILE = "ca-rotation.json"
ROLES: tuple[Role, ...] = ("access", "internal")


class RotationState(BaseModel):
    """One role's rotation under way. ``published``: the successor is trusted but signs nothing yet
    (internal CA only); ``overlap``: the new CA signs, the old one is still trusted."""

    model_config = ConfigDict(extra="forbid")
    phase: Literal["published", "overlap"]
    old_sha256: str
    new_sha256: str
    published_at: str
    switched_at: str | None = None
    overlap_until: str
    actor: str


class RotationFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    access: RotationState | None = None
    internal: RotationState | None = None
    finished: list[dict[str, Any]] = Field(default_factory=list)

    def get(self, role: Role) -> RotationState | None:
        return self.access if role == "access" else self.internal

    def set(self, role: Role, value: RotationState | None) -> None:
        if role == "access":
            self.access = value
        else:
            self.internal = value


@dataclass(frozen=True)
class CaFiles:
    """Where one role's CAs live in a state dir."""

    state: StateDir
    role: Role

    def _path(self, suffix: str) -> Path:
        return self.state.pki_dir / f"{self.role}-ca{suffix}"

    @property
    def cert(self) -> Path:
        return self.state.access_ca_cert if self.role == "access" else self.state.internal_ca_cert

    @property
    def key(self) -> Path:
        return self.state.access_ca_key if self.role == "access" else self.state.internal_ca_key

    @property
    def previous_cert(self) -> Path:
        return self._path("-previous.crt")

    @property
    def previous_key(self) -> Path:
        return self._path("-previous.key")

    @property
    def next_cert(self) -> Path:
        return self._path("-next.crt")

    @property
    def next_key(self) -> Path:
        return self._path("-next.key")

    @property
    def bundle(self) -> Path:
        return self.state.access_ca_bundle if self.role == "access" else self.state.internal_ca_bundle

    @property
    def rollovers(self) -> Path:
        return self._path("-rollovers.json")

    def load_current(self, trust_domain: str) -> CertificateAuthority:
        return CertificateAuthority.load(self.role, trust_domain, self.cert, self.key)

    def trusted(self) -> list[x509.Certificate]:
        """Every CA of this role trusted now: the current one first, then the previous or the next one."""
        with ca_lock(self.state.pki_dir, exclusive=False):
            found = [load_cert(self.cert)]
            for path in (self.previous_cert, self.next_cert):
                if path.is_file():
                    found.append(load_cert(path))
        return found

    def previous(self) -> x509.Certificate | None:
        return load_cert(self.previous_cert) if self.previous_cert.is_file() else None

    def statements(self) -> list[Rollover]:
        try:
            text = self.rollovers.read_text()
        except FileNotFoundError:
            return []
        return statements_from_json(text)

    def write_bundle(self, certs: list[x509.Certificate]) -> None:
        """The bundle of ``certs`` when there is more than one; with one CA, no bundle (the CA file serves)."""
        if len(certs) > 1:
            write_public(self.bundle, b"".join(cert_pem(c) for c in certs))
        else:
            self.bundle.unlink(missing_ok=True)


def gateway_issuer(state: StateDir, trust_domain: str) -> CertificateAuthority:
    """The access CA that signs the gateway's certificate: during an access CA rotation the previous one, so
    that clients and nodes that trust only it keep connecting; the gateway moves over at `--finish`
    (pki/rollout.py)."""
    files = CaFiles(state, "access")
    if read_rotation(state).access is not None and files.previous_cert.is_file():
        return CertificateAuthority.load("access", trust_domain, files.previous_cert, files.previous_key)
    return files.load_current(trust_domain)


class CurrentCA:
    """A role's current CA for a long-running signer (the gateway): reloaded when a rotation swaps its files."""

    def __init__(self, state: StateDir, role: Role, trust_domain: str) -> None:
        self.files = CaFiles(state, role)
        self.trust_domain = trust_domain
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._ca: CertificateAuthority | None = None

    def get(self) -> CertificateAuthority:
        stamp = _stamp(self.files.cert, self.files.key)
        with self._lock:
            if self._ca is None or stamp != self._stamp:
                self._ca = self.files.load_current(self.trust_domain)
                self._stamp = stamp
            return self._ca


def _stamp(*paths: Path) -> tuple[int, ...]:
    """Identity and size of files: changes when one is replaced (rename) or rewritten."""
    found: list[int] = []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            found += [0, 0, 0]
            continue
        found += [st.st_ino, st.st_mtime_ns, st.st_size]
    return tuple(found)


def answer_stamp(state: StateDir) -> tuple[int, ...]:
    """Changes whenever ``trust_answer`` would: lets the gateway cache the answer of an anonymous route."""
    files = CaFiles(state, "access")
    return _stamp(files.cert, files.bundle, files.previous_cert, files.rollovers, rotation_path(state))


def rotation_path(state: StateDir) -> Path:
    return state.pki_dir / ROTATION_FILE


def read_rotation(state: StateDir) -> RotationFile:
    try:
        return RotationFile.model_validate_json(rotation_path(state).read_text())
    except FileNotFoundError:
        return RotationFile()
    except ValidationError as exc:
        raise ConfigError(f"{rotation_path(state)} is invalid: {exc}", hint="restore it from a backup") from None


def write_rotation(state: StateDir, value: RotationFile) -> None:
    write_private(rotation_path(state), (value.model_dump_json(indent=2) + "\n").encode())


def cluster_id(state: StateDir) -> str:
    """The fingerprint of the first access CA this cluster had: stable across rotations (bearer tokens are
    bound to it), unlike the current access CA's."""
    statements = [s for s in CaFiles(state, "access").statements() if s.role == "access"]
    if statements:
        return statements[0].old_sha256
    return fingerprint(load_cert(state.access_ca_cert))


def trust_answer(state: StateDir, trust_domain: str) -> dict[str, Any]:
    """What ``GET /raywarden/v1/ca`` (and every renewal answer) tells clients about the access CA.

    ``access_ca_pem`` and ``sha256`` are the current CA, as before rotations existed; ``trusted_pem`` adds the
    previous CA while an overlap lasts; ``rollovers`` lets a client pinning an older CA verify its way here.
    Nothing here is to be believed by itself: clients check it against the CA they pin (pki/rollover.py).
    """
    files = CaFiles(state, "access")
    trusted = files.trusted()
    current = trusted[0]
    rotation = read_rotation(state).access
    answer: dict[str, Any] = {
        "access_ca_pem": cert_pem(current).decode("ascii"),
        "sha256": fingerprint(current),
        "trust_domain": trust_domain,
        "trusted_pem": [cert_pem(c).decode("ascii") for c in trusted],
        "rollovers": [s.to_json() for s in files.statements()],
    }
    if rotation is not None:
        answer["overlap_until"] = rotation.overlap_until
    return answer


def parse_time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def describe_ca(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "sha256": fingerprint(cert),
        "not_before": iso(cert.not_valid_before_utc),
        "not_after": iso(cert.not_valid_after_utc),
    }


def status(state: StateDir) -> dict[str, Any]:
    """Every CA of both roles, the rotation under way (if any) and the finished ones, for `ca status`."""
    rotation = read_rotation(state)
    roles: dict[str, Any] = {}
    now = dt.datetime.now(dt.timezone.utc)
    for role in ROLES:
        files = CaFiles(state, role)
        current = load_cert(files.cert)
        entry: dict[str, Any] = {
            "current": describe_ca(current),
            "previous": describe_ca(load_cert(files.previous_cert)) if files.previous_cert.is_file() else None,
            "next": describe_ca(load_cert(files.next_cert)) if files.next_cert.is_file() else None,
            "bundle": str(files.bundle) if files.bundle.is_file() else None,
            "rollovers": len(files.statements()),
            "rotation": None,
        }
        under_way = rotation.get(role)
        if under_way is not None:
            until = parse_time(under_way.overlap_until)
            entry["rotation"] = {**under_way.model_dump(), "overdue": now > until}
        roles[role] = entry
    return {"state_dir": str(state.root), **roles, "finished": rotation.finished}


def check_consistent(state: StateDir, role: Role) -> None:
    """The files agree with the rotation record: refuse to act on a half-done change."""
    files = CaFiles(state, role)
    record = read_rotation(state).get(role)
    has_previous, has_next = files.previous_cert.is_file(), files.next_cert.is_file()
    expected = (False, False) if record is None else ((False, True) if record.phase == "published" else (True, False))
    if (has_previous, has_next) != expected:
        raise PKIError(
            f"the {role} CA files in {state.pki_dir} do not match {ROTATION_FILE} "
            f"(previous CA present: {has_previous}, published successor present: {has_next})",
            hint="a rotation was interrupted: restore the pki folder from a backup, or fix it by hand "
            f"({json.dumps(record.model_dump() if record else None)})",
        )
