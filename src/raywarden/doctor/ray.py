"""Ray itself: both processes up, its version (and the CVEs known for it), token auth enforced, mutual TLS on."""

from __future__ import annotations

from pathlib import Path

import requests

from raywarden.doctor.context import DoctorContext
from raywarden.doctor.probe import dashboard_get, ray_token
from raywarden.doctor.report import Check, command, failed, passed, skipped, warned
from raywarden.errors import RaywardenError
from raywarden.scan.cves import cves_for_version, parse_version

# Ray 2.52 added token auth (RAY_AUTH_MODE=token); raywarden depends on it.
MIN_RAY = "2.52.0"
# What `up` puts in every Ray process's environment (cluster/ray_head.py); read back from the head process.
_REQUIRED_ENV = {"RAY_USE_TLS": "1", "RAY_AUTH_MODE": "token"}


def checks(ctx: DoctorContext) -> list[Check]:
    results = [_processes(ctx)]
    if not ctx.ray_up:
        return [*results, skipped("ray.version"), skipped("ray.auth"), skipped("ray.tls")]
    return [*results, _version(ctx), _auth(ctx), _tls(ctx)]


def _restart(ctx: DoctorContext) -> str:
    root = ctx.state.root
    return command("raywarden", "down", "--state-dir", root) + " && " + command("raywarden", "up", "--state-dir", root)


def _processes(ctx: DoctorContext) -> Check:
    if ctx.ray_up and ctx.gateway_up:
        return passed("ray.processes", "Ray head and gateway are running")
    if not ctx.running:
        return skipped("ray.processes")
    down = "the gateway" if ctx.ray_up else "Ray"
    return failed("ray.processes", f"{down} is not running while the rest of the cluster is", _restart(ctx))


def _version(ctx: DoctorContext) -> Check:
    try:
        resp = dashboard_get(ctx, "/api/version", token=ray_token(ctx))
    except (requests.RequestException, RaywardenError) as exc:
        return failed("ray.version", f"Ray's dashboard did not answer: {type(exc).__name__}", _restart(ctx))
    if resp.status_code != 200:
        return failed(
            "ray.version", f"Ray's dashboard refused raywarden's token (HTTP {resp.status_code})", _restart(ctx)
        )
    version = str(resp.json().get("ray_version", ""))
    key = parse_version(version)
    if key is None:
        return warned(
            "ray.version", f"Ray reported an unreadable version {version!r}", "pip install --upgrade 'ray[default]'"
        )
    minimum = parse_version(MIN_RAY)
    if minimum is not None and key < minimum:
        return failed(
            "ray.version",
            f"Ray {version} has no token auth (needs 2.52 or later)",
            "pip install --upgrade 'ray[default]>=2.52'",
            version=version,
        )
    cves = cves_for_version(version)
    known = [c.id for c in cves]
    if known:
        make = failed if any(c.severity in ("critical", "high") for c in cves) else warned
        return make(
            "ray.version",
            f"Ray {version} is affected by {', '.join(known)}",
            "pip install --upgrade 'ray[default]', then " + _restart(ctx),
            version=version,
            cves=known,
        )
    return passed("ray.version", f"Ray {version}, none of the CVEs raywarden knows of", version=version)


def _auth(ctx: DoctorContext) -> Check:
    try:
        mode = dashboard_get(ctx, "/api/authentication_mode", token=None)
        anonymous = dashboard_get(ctx, "/api/jobs/", token=None)
    except requests.RequestException as exc:
        return failed("ray.auth", f"Ray's dashboard did not answer: {type(exc).__name__}", _restart(ctx))
    reported = mode.json().get("authentication_mode") if mode.status_code == 200 else None
    if reported != "token":
        return failed("ray.auth", f"Ray's authentication mode is {reported!r}, not 'token'", _restart(ctx))
    if anonymous.status_code not in (401, 403):
        return failed(
            "ray.auth", f"Ray answered an anonymous GET /api/jobs/ with HTTP {anonymous.status_code}", _restart(ctx)
        )
    return passed("ray.auth", f"token auth is on; an anonymous request to Ray got HTTP {anonymous.status_code}")


def _tls(ctx: DoctorContext) -> Check:
    """Ray's gRPC TLS cannot be seen over HTTP; the head process's environment says how it was started."""
    if ctx.run is None:
        return skipped("ray.tls")
    try:
        raw = Path(f"/proc/{ctx.run.ray_pid}/environ").read_bytes()
    except OSError as exc:
        return warned(
            "ray.tls",
            f"cannot read the Ray head's environment ({exc.strerror})",
            "run doctor as the user that started the cluster",
        )
    env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    # Only the names checked here are read back; the environment holds paths, never the token itself.
    wrong = [name for name, want in _REQUIRED_ENV.items() if env.get(name.encode(), b"").decode() != want]
    if wrong:
        return failed("ray.tls", f"the Ray head was started without {', '.join(wrong)}", _restart(ctx))
    return passed("ray.tls", "the Ray head runs with mutual TLS (RAY_USE_TLS=1) and RAY_AUTH_MODE=token")
