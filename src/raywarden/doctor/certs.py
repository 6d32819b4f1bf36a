"""Certificate expiry and chains: both CAs, the gateway and node certificates, and local client profiles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from raywarden.doctor.context import DoctorContext
from raywarden.doctor.report import Check, command, failed, passed, warned
from raywarden.errors import RaywardenError
from raywarden.pki.certs import load_cert, remaining, spiffe_id_of
from raywarden.pki.spiffe import SpiffeId

CA_WARN = dt.timedelta(days=14)
LEAF_WARN = dt.timedelta(days=7)

_CA_FIX = (
    "a CA cannot be renewed in place yet: create a new cluster (`raywarden init --state-dir NEW_DIR`), "
    "re-enroll its users and nodes, then retire this one"
)


def renew_fix(ctx: DoctorContext, which: str) -> str:
    """Leaf certificates are read at start-up, so renewing one means a restart around the re-issue."""
    root = ctx.state.root
    return " && ".join(
        [
            command("raywarden", "down", "--state-dir", root),
            command("python", "-m", "raywarden.doctor.renew", which, "--state-dir", root),
            command("raywarden", "up", "--state-dir", root),
        ]
    )


def checks(ctx: DoctorContext) -> list[Check]:
    state = ctx.state
    access = _ca(ctx, "certs.access-ca", "access CA", state.access_ca_cert)
    internal = _ca(ctx, "certs.internal-ca", "internal CA", state.internal_ca_cert)
    results = [access[0], internal[0]]
    results.append(
        _leaf(
            ctx,
            "certs.gateway",
            "gateway certificate",
            state.gateway_cert,
            state.gateway_key,
            access[1],
            SpiffeId(ctx.config.trust_domain, "gateway"),
            renew_fix(ctx, "gateway"),
        )
    )
    results.append(
        _leaf(
            ctx,
            "certs.node",
            "head node certificate",
            state.node_cert,
            state.node_key,
            internal[1],
            SpiffeId(ctx.config.trust_domain, "node", "head"),
            renew_fix(ctx, "node"),
        )
    )
    for profile in ctx.local_profiles():
        results.append(_profile(ctx, profile.name, profile.cert_path, profile.ca_path, access[1]))
    return results


def _left(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.1f} days" if abs(days) >= 1 else f"{delta.total_seconds() / 3600:.1f} hours"


def _ca(ctx: DoctorContext, check_id: str, what: str, path: Path) -> tuple[Check, x509.Certificate | None]:
    try:
        cert = load_cert(path)
    except RaywardenError as exc:
        return failed(check_id, exc.message, "restore it from a backup of the state dir"), None
    left = remaining(cert, ctx.now)
    details = {"not_after": cert.not_valid_after_utc.isoformat(), "days_left": round(left.total_seconds() / 86400, 2)}
    if left <= dt.timedelta(0):
        return failed(
            check_id, f"the {what} expired {_left(-left)} ago ({cert.not_valid_after_utc:%Y-%m-%d})", _CA_FIX, **details
        ), cert
    if left < CA_WARN:
        return warned(check_id, f"the {what} expires in {_left(left)}", _CA_FIX, **details), cert
    return passed(check_id, f"the {what} is valid for {_left(left)}", **details), cert


def _leaf(
    ctx: DoctorContext,
    check_id: str,
    what: str,
    path: Path,
    key_path: Path,
    issuer: x509.Certificate | None,
    expected: SpiffeId,
    fix: str,
) -> Check:
    try:
        cert = load_cert(path)
    except RaywardenError as exc:
        return failed(check_id, exc.message, fix)
    left = remaining(cert, ctx.now)
    details = {"not_after": cert.not_valid_after_utc.isoformat(), "days_left": round(left.total_seconds() / 86400, 2)}
    problem = _chain_problem(cert, issuer, expected) or _key_problem(cert, key_path)
    if problem:
        return failed(check_id, f"the {what} {problem}", fix, **details)
    if left <= dt.timedelta(0):
        expired = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        return failed(check_id, f"the {what} expired {_left(-left)} ago ({expired})", fix, **details)
    if left < LEAF_WARN:
        return warned(check_id, f"the {what} expires in {_left(left)}", fix, **details)
    return passed(check_id, f"the {what} is valid for {_left(left)}, issued by its CA to {expected}", **details)


def _chain_problem(cert: x509.Certificate, issuer: x509.Certificate | None, expected: SpiffeId) -> str | None:
    if issuer is not None:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return "was not issued by this cluster's CA"
    try:
        found = spiffe_id_of(cert)
    except RaywardenError as exc:
        return f"is not an X.509-SVID ({exc.message})"
    if found != expected:
        return f"names {found}, expected {expected}"
    return None


def _key_problem(cert: x509.Certificate, key_path: Path) -> str | None:
    # Read directly: a key with loose permissions is files.keys' finding, not a reason to skip this one.
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        return f"has no key ({key_path} is missing)"
    except (ValueError, TypeError):
        return f"has an unreadable key ({key_path})"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        return f"does not match its key {key_path}"
    return None


def _profile(ctx: DoctorContext, name: str, cert_path: Path, ca_path: Path, access: x509.Certificate | None) -> Check:
    check_id = f"certs.profile.{name}"
    try:
        cert = load_cert(cert_path)
        pinned = load_cert(ca_path)
    except RaywardenError as exc:
        return warned(check_id, f"profile {name!r}: {exc.message}", "re-create the profile")
    if access is not None and pinned != access:
        return failed(
            check_id,
            f"profile {name!r} pins a different access CA than this cluster's",
            command("cp", ctx.state.access_ca_cert, ca_path),
        )
    if access is not None:
        try:
            cert.verify_directly_issued_by(access)
        except (ValueError, TypeError, InvalidSignature):
            return failed(
                check_id,
                f"profile {name!r} holds a certificate from another CA",
                "re-create the profile from this cluster",
            )
    left = remaining(cert, ctx.now)
    details = {"not_after": cert.not_valid_after_utc.isoformat()}
    # The admin profile renews itself on its next use (client/renew.py): expiry here is routine, not a hole.
    renew = command("raywarden", "job", "list", "--profile", name)
    if left <= dt.timedelta(0):
        return warned(
            check_id,
            f"profile {name!r}: client certificate expired {_left(-left)} ago (renewed automatically on next use)",
            renew,
            **details,
        )
    return passed(check_id, f"profile {name!r}: client certificate valid for {_left(left)}", **details)
