"""Certificate expiry, chains and renewal: both CAs, the gateway, the head node, every worker node as the
registry knows it, and local client profiles. Warns before trouble: a certificate past its renewal point, a
head certificate near its end, a renewal that keeps failing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from raywarden.cluster.certlife import Lifetime
from raywarden.doctor.context import DoctorContext
from raywarden.doctor.report import Check, command, failed, passed, warned
from raywarden.errors import RaywardenError
from raywarden.gateway.renewal import renewal_status
from raywarden.identity.nodes import NodeRegistry
from raywarden.pki.certs import load_cert, remaining, spiffe_id_of
from raywarden.pki.spiffe import SpiffeId

CA_WARN = dt.timedelta(days=14)
LEAF_WARN = dt.timedelta(days=7)
# The head's certificate is renewed only by restarting the head's Ray: warn a month ahead, fail the last day.
HEAD_WARN = dt.timedelta(days=30)
HEAD_FAIL = dt.timedelta(days=1)
# Renewals failed this many times in a row: someone should look.
FAILURES_WARN = 2

_CA_FIX = (
    "a CA cannot be renewed in place yet: create a new cluster (`raywarden init --state-dir NEW_DIR`), "
    "re-enroll its users and nodes, then retire this one"
)


def renew_fix(ctx: DoctorContext, which: str) -> str:
    """The gateway swaps a new certificate in while it runs; the head's is taken into use by restarting the
    head's Ray (the gateway stays up)."""
    flag = "--gateway" if which == "gateway" else "--head"
    return command("raywarden", "cert", "rotate", flag, "--state-dir", ctx.state.root)


def checks(ctx: DoctorContext) -> list[Check]:
    state = ctx.state
    access = _ca(ctx, "certs.access-ca", "access CA", state.access_ca_cert)
    internal = _ca(ctx, "certs.internal-ca", "internal CA", state.internal_ca_cert)
    results = [access[0], internal[0]]
    gateway = _leaf(
        ctx,
        "certs.gateway",
        "gateway certificate",
        state.gateway_cert,
        state.gateway_key,
        access[1],
        SpiffeId(ctx.config.trust_domain, "gateway"),
        renew_fix(ctx, "gateway"),
        warn=dt.timedelta(0),  # renewed automatically: judged by its renewal point, below
    )
    results.append(_gateway_renewal(ctx, gateway))
    head = _leaf(
        ctx,
        "certs.node",
        "head node certificate",
        state.node_cert,
        state.node_key,
        internal[1],
        SpiffeId(ctx.config.trust_domain, "node", "head"),
        renew_fix(ctx, "node"),
        warn=HEAD_WARN,
    )
    results.append(_head_horizon(ctx, head))
    results += worker_checks(ctx)
    for profile in ctx.local_profiles():
        results.append(_profile(ctx, profile.name, profile.cert_path, profile.ca_path, access[1]))
    return results


def _gateway_renewal(ctx: DoctorContext, check: Check) -> Check:
    """A certificate that is fine by itself, but past its renewal point while the gateway runs (it renews at
    2/3 of its life, so it should not be; a stopped gateway renews at `up`), or whose renewals keep failing."""
    if check.status != "pass":
        return check
    cert = load_cert(ctx.state.gateway_cert)
    life = Lifetime.of(cert)
    status = renewal_status(ctx.state)
    log = ctx.state.logs_dir / "gateway.log"
    if status is not None and not status.get("accepted") and int(status.get("failures", 0)) >= FAILURES_WARN:
        return warned(
            check.id,
            f"the gateway certificate's renewal failed {status['failures']} times in a row: {status.get('reason')}",
            f"fix the cause (see {log}), then {renew_fix(ctx, 'gateway')}",
            **check.details,
        )
    if ctx.gateway_up and life.overdue(ctx.now):
        return warned(
            check.id,
            f"the gateway certificate is past its renewal point ({life.renew_at():%Y-%m-%d %H:%M} UTC) and was "
            f"not renewed; it expires in {_left(life.left(ctx.now))}",
            f"see {log}; {renew_fix(ctx, 'gateway')} renews it now",
            **check.details,
        )
    return check


def _head_horizon(ctx: DoctorContext, check: Check) -> Check:
    """The head's certificate ends the cluster's life unless the head's Ray restarts first."""
    if check.status != "warn":
        return check
    left = remaining(load_cert(ctx.state.node_cert), ctx.now)
    message = (
        f"the head node certificate expires in {_left(left)}: the head's Ray reads it only at start, so the "
        "cluster stops accepting new work then unless the head's Ray restarts first (running jobs end with it)"
    )
    if left < HEAD_FAIL:
        return failed(check.id, message, renew_fix(ctx, "node"), **check.details)
    return warned(check.id, message, f"at a time that suits you: {renew_fix(ctx, 'node')}", **check.details)


def worker_checks(ctx: DoctorContext) -> list[Check]:
    """Each active worker node, as the head last issued to it: renewed in time, renewals not failing."""
    if not ctx.state.identity_db.is_file():
        return []
    try:
        nodes = NodeRegistry.open(ctx.state.identity_db).all()
    except RaywardenError as exc:
        return [failed("certs.workers", f"cannot read the node registry: {exc.message}", exc.hint or "")]
    results = []
    for node in nodes:
        if node.status != "active":
            continue
        check_id = f"certs.worker.{node.name}"
        not_after = dt.datetime.fromisoformat(node.not_after)
        issued = node.renewal.cert_issued_at
        life = Lifetime(
            dt.datetime.fromisoformat(issued) if issued else not_after - ctx.config.node_cert_ttl, not_after
        )
        details = {"serial": node.serial, "not_after": node.not_after, "renew_at": life.renew_at().isoformat()}
        on_node = f"on {node.name} ({node.address}): `raywarden cert status` and its logs/agent.log in the state dir"
        if life.left(ctx.now) <= dt.timedelta(0):
            verdict = failed(
                check_id,
                f"worker {node.name}'s certificate expired {_left(-life.left(ctx.now))} ago: it can no longer open "
                "connections to the other nodes",
                f"its node agent renews it as soon as it reaches the head again (look {on_node}); if the agent is "
                f"gone: `raywarden down` on {node.name}, then join again with a new token",
                **details,
            )
        elif node.renewal.failures >= FAILURES_WARN:
            verdict = warned(
                check_id,
                f"worker {node.name}'s certificate renewal failed {node.renewal.failures} times in a row: "
                f"{node.renewal.last_error}",
                f"look {on_node}",
                **details,
            )
        elif life.overdue(ctx.now):
            verdict = warned(
                check_id,
                f"worker {node.name}'s certificate is past its renewal point ({life.renew_at():%Y-%m-%d %H:%M} UTC) "
                f"and expires in {_left(life.left(ctx.now))}: its node agent has not renewed it",
                f"look {on_node}",
                **details,
            )
        else:
            verdict = passed(
                check_id, f"worker {node.name}'s certificate renews at {life.renew_at():%Y-%m-%d %H:%M} UTC", **details
            )
        results.append(verdict)
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
    *,
    warn: dt.timedelta = LEAF_WARN,
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
    if left < warn:
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
