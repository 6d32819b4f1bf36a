"""CA rotation on the head: start an overlap in which both CAs are trusted, then drop the old CA.

Access CA: `ca rotate access` makes a new CA current at once (people and service accounts get certificates
from it), keeps the old one trusted until `--finish`, and has both sign a rollover statement so that clients
pinning either follow (pki/rollover.py). The gateway's own certificate moves to the new CA at `--finish`
(pki/rollout.py), so that clients and nodes that trust only the old CA keep connecting meanwhile.

Internal CA: Ray reads its CA file only when a process starts, so the successor is first *published* (in the
bundle, signing nothing); once every running Ray process has started since, `ca rotate internal` again makes it
current; `--finish` drops the old CA once every Ray process runs on a certificate from the new one.
Every step holds the pki folder's exclusive lock (signers read under the shared one) and is audited.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from raywarden.config import ClusterConfig
from raywarden.errors import PKIError
from raywarden.files import write_private
from raywarden.pki.ca_keys import CertificateAuthority, Role, ca_lock, destroy_ca_key
from raywarden.pki.certs import fingerprint, load_cert
from raywarden.pki.rollover import Rollover, make_rollover, statements_to_json
from raywarden.pki.trust import (
    CaFiles,
    RotationState,
    check_consistent,
    iso,
    parse_time,
    read_rotation,
    write_rotation,
)
from raywarden.state import StateDir

DEFAULT_OVERLAP = dt.timedelta(days=7)
MIN_OVERLAP = dt.timedelta(minutes=2)


@dataclass
class Step:
    """What one `ca rotate` did, for the CLI's report and the audit record."""

    role: Role
    event: str  # "ca.publish", "ca.rotate.start", "ca.rotate.finish"
    old_sha256: str
    new_sha256: str
    overlap_until: str | None = None
    notes: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)  # Ray processes still on the old trust (internal)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "event": self.event,
            "old_sha256": self.old_sha256,
            "new_sha256": self.new_sha256,
            "overlap_until": self.overlap_until,
            "notes": self.notes,
            "waiting_for": self.waiting_for,
        }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _append_statement(files: CaFiles, statement: Rollover) -> None:
    # A statement from the current CA can only be left over from an interrupted attempt (the current CA has
    # no successor yet): drop it, so the chain never forks.
    kept = [s for s in files.statements() if s.old_sha256 != statement.old_sha256]
    write_private(files.rollovers, statements_to_json([*kept, statement]).encode())
    files.rollovers.chmod(0o644)  # public certificates and signatures, served by GET /raywarden/v1/ca


def _check_overlap(overlap: dt.timedelta) -> None:
    if overlap < MIN_OVERLAP:
        raise PKIError("the overlap must be at least 2 minutes", hint="for example --overlap 7d")


def start_access(state: StateDir, config: ClusterConfig, *, actor: str, overlap: dt.timedelta) -> Step:
    """New access CA, current at once; the old one stays trusted for client certificates until `--finish`."""
    _check_overlap(overlap)
    files = CaFiles(state, "access")
    with ca_lock(state.pki_dir, exclusive=True):
        check_consistent(state, "access")
        record = read_rotation(state)
        if record.access is not None:
            raise PKIError(
                "an access CA rotation is already under way",
                hint="finish it first: `raywarden ca rotate access --finish` (see `raywarden ca status`)",
            )
        old = files.load_current(config.trust_domain)
        new = CertificateAuthority.create("access", config.trust_domain, years=config.ca_years)
        until = _now() + overlap
        _append_statement(files, make_rollover(old, new, until))
        old.save(files.previous_cert, files.previous_key)
        files.write_bundle([new.certificate, old.certificate])
        new.save(files.cert, files.key)
        record.access = RotationState(
            phase="overlap",
            old_sha256=fingerprint(old.certificate),
            new_sha256=fingerprint(new.certificate),
            published_at=iso(_now()),
            switched_at=iso(_now()),
            overlap_until=iso(until),
            actor=actor,
        )
        write_rotation(state, record)
    return Step("access", "ca.rotate.start", record.access.old_sha256, record.access.new_sha256, iso(until))


def publish_internal(state: StateDir, config: ClusterConfig, *, actor: str, overlap: dt.timedelta) -> Step:
    """A successor internal CA in the bundle, signing nothing yet: Ray processes started from now trust it."""
    _check_overlap(overlap)
    files = CaFiles(state, "internal")
    with ca_lock(state.pki_dir, exclusive=True):
        check_consistent(state, "internal")
        record = read_rotation(state)
        if record.internal is not None:
            raise PKIError("an internal CA rotation is already under way", hint="see `raywarden ca status`")
        old = files.load_current(config.trust_domain)
        new = CertificateAuthority.create("internal", config.trust_domain, years=config.ca_years)
        until = _now() + overlap
        _append_statement(files, make_rollover(old, new, until))
        new.save(files.next_cert, files.next_key)
        files.write_bundle([old.certificate, new.certificate])
        record.internal = RotationState(
            phase="published",
            old_sha256=fingerprint(old.certificate),
            new_sha256=fingerprint(new.certificate),
            published_at=iso(_now()),
            overlap_until=iso(until),
            actor=actor,
        )
        write_rotation(state, record)
    return Step("internal", "ca.publish", record.internal.old_sha256, record.internal.new_sha256, iso(until))


def switch_internal(state: StateDir, config: ClusterConfig) -> Step:
    """The published successor becomes the current internal CA; the old one stays trusted until `--finish`."""
    files = CaFiles(state, "internal")
    with ca_lock(state.pki_dir, exclusive=True):
        check_consistent(state, "internal")
        record = read_rotation(state)
        under_way = record.internal
        if under_way is None or under_way.phase != "published":
            raise PKIError("no published internal CA is waiting to become current", hint="see `raywarden ca status`")
        old = files.load_current(config.trust_domain)
        new = CertificateAuthority.load("internal", config.trust_domain, files.next_cert, files.next_key)
        if fingerprint(new.certificate) != under_way.new_sha256:
            raise PKIError(f"{files.next_cert} is not the published successor", hint="restore it from a backup")
        old.save(files.previous_cert, files.previous_key)
        files.write_bundle([new.certificate, old.certificate])
        new.save(files.cert, files.key)
        files.next_cert.unlink()
        destroy_ca_key(files.next_key)  # a copy of the key now current
        under_way.phase, under_way.switched_at = "overlap", iso(_now())
        write_rotation(state, record)
    return Step("internal", "ca.rotate.start", under_way.old_sha256, under_way.new_sha256, under_way.overlap_until)


def finish(state: StateDir, role: Role, *, actor: str, forced: bool) -> Step:
    """Drop the old CA: out of the bundle (so out of every verifier that loads its CA file from now on), its
    key destroyed. The rollover statements stay, for clients that still pin it."""
    files = CaFiles(state, role)
    with ca_lock(state.pki_dir, exclusive=True):
        check_consistent(state, role)
        record = read_rotation(state)
        under_way = record.get(role)
        if under_way is None:
            raise PKIError(f"no {role} CA rotation is under way", hint="see `raywarden ca status`")
        if under_way.phase == "published":
            raise PKIError(
                "the new internal CA is only published: it has signed nothing, so there is no overlap to finish",
                hint="make it current with `raywarden ca rotate internal` once Ray has restarted, or withdraw it "
                "with `raywarden ca rotate internal --abort`",
            )
        files.write_bundle([load_cert(files.cert)])
        files.previous_cert.unlink()
        destroy_ca_key(files.previous_key)
        event, kept = "ca.rotate.finish", under_way.new_sha256
        record.finished.append(
            {
                "role": role,
                "event": event,
                **under_way.model_dump(),
                "finished_at": iso(_now()),
                "finished_by": actor,
                "forced": forced,
            }
        )
        record.set(role, None)
        write_rotation(state, record)
    return Step(role, event, under_way.old_sha256, kept)


def abort_internal(state: StateDir, *, actor: str) -> Step:
    """Withdraw a published internal successor that never signed anything; the current CA stays."""
    files = CaFiles(state, "internal")
    with ca_lock(state.pki_dir, exclusive=True):
        check_consistent(state, "internal")
        record = read_rotation(state)
        under_way = record.internal
        if under_way is None or under_way.phase != "published":
            raise PKIError(
                "only a published internal CA that signs nothing yet can be withdrawn",
                hint="an overlap under way ends with `raywarden ca rotate internal --finish`",
            )
        files.write_bundle([load_cert(files.cert)])
        files.next_cert.unlink()
        destroy_ca_key(files.next_key)
        record.finished.append(
            {
                "role": "internal",
                "event": "ca.publish.withdraw",
                **under_way.model_dump(),
                "finished_at": iso(_now()),
                "finished_by": actor,
                "forced": False,
            }
        )
        record.internal = None
        write_rotation(state, record)
    return Step("internal", "ca.publish.withdraw", under_way.old_sha256, under_way.old_sha256)


def overlap_left(state: StateDir, role: Role) -> dt.timedelta | None:
    under_way = read_rotation(state).get(role)
    return None if under_way is None else parse_time(under_way.overlap_until) - _now()


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (its signature verifies with the CA's key)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):  # wrong issuer name, key type or signature
        return False
    return True
