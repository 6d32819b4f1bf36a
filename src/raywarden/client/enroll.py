"""Client side of enrollment: pin the access CA, redeem a one-time code with a locally generated key,
renew a remote profile's certificate, and get a short-lived bearer token from the gateway."""

from __future__ import annotations

import hmac
import http.client
import json
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509

from raywarden.client.answers import refusal
from raywarden.client.profile import Profile, delete_profile, load_profile_or_none, set_current
from raywarden.errors import ConfigError, GatewayRequestError, PKIError, UsageError
from raywarden.identity.enrollment import parse_code
from raywarden.pki.certs import fingerprint
from raywarden.pki.csr import build_csr
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId, check_name

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PinnedCA:
    pem: bytes
    sha256: str
    trust_domain: str


def normalize_fingerprint(text: str) -> str:
    """Accept ``SHA256:AB:CD...``, ``ab cd ...`` or plain hex; return 64 lowercase hex digits."""
    value = text.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if len(value) != 64 or set(value) - set("0123456789abcdef"):
        raise UsageError(
            "--ca-fingerprint must be the access CA's SHA-256 (64 hex digits)",
            hint="the administrator sees it in `raywarden status`",
        )
    return value


def gateway_base(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise UsageError(f"{url!r} is not a gateway URL", hint="for example https://gateway.example:8443")
    return f"https://{parts.netloc}"


def fetch_pinned_ca(url: str, expected_sha256: str) -> PinnedCA:
    """First contact: fetch the access CA over TLS that is *not* verified (there is nothing to verify it
    with yet), send nothing secret, and accept the CA only if its SHA-256 equals the pinned fingerprint."""
    expected = normalize_fingerprint(expected_sha256)
    parts = urlsplit(gateway_base(url))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # deliberate: the pin below is what authenticates the answer
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, timeout=TIMEOUT_S, context=ctx)
    try:
        conn.request("GET", "/raywarden/v1/ca", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        data = resp.read(256 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        raise ConfigError(f"cannot reach the gateway at {url}: {exc}", hint="check the URL and your network") from None
    finally:
        conn.close()
    try:
        body = json.loads(data)
        pem = str(body["access_ca_pem"]).encode()
        cert = x509.load_pem_x509_certificate(pem)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{url} did not answer like a raywarden gateway (HTTP {resp.status})") from None
    actual = fingerprint(cert)
    if not hmac.compare_digest(actual, expected):
        raise PKIError(
            f"the gateway's access CA has fingerprint {actual}, not the pinned {expected}; nothing was sent",
            hint="someone may be intercepting the connection, or the fingerprint "
            "is from another cluster: check it with your administrator",
        )
    return PinnedCA(pem, actual, str(body.get("trust_domain", "")))


@dataclass(frozen=True)
class LoginResult:
    profile: Profile
    # The profile of the same name that this login replaced (same identity, or --force).
    replaced: Profile | None = None
    # The profile under the default name that belongs to someone else and was left as it was.
    kept: Profile | None = None


def _same_owner(existing: Profile, identity: SpiffeId, gateway: str) -> bool:
    return existing.identity == str(identity) and existing.gateway_url == gateway


def choose_profile_name(
    requested: str | None, trust_domain: str, identity: SpiffeId, gateway: str, *, force: bool
) -> tuple[str, Profile | None, Profile | None]:
    """Pick the profile a login writes: ``(name, profile it replaces, profile it leaves alone)``.

    A profile is replaced only with --force or when it holds the same identity at the same gateway. The
    default name is the trust domain; when someone else holds it, ``TRUST_DOMAIN-NAME`` is used instead.
    """

    def taken(name: str, existing: Profile) -> ConfigError:
        return ConfigError(
            f"profile {name!r} already holds {existing.identity} at {existing.gateway_url}",
            hint="choose another name with --profile NAME, or pass --force to replace it (its key is deleted)",
        )

    if requested is not None:
        name = check_name(requested, "profile name")
        existing = load_profile_or_none(name)
        if existing is None:
            return name, None, None
        if force or _same_owner(existing, identity, gateway):
            return name, existing, None
        raise taken(name, existing)
    default = check_name(trust_domain, "profile name")
    existing = load_profile_or_none(default)
    if existing is None:
        return default, None, None
    if force or _same_owner(existing, identity, gateway):
        return default, existing, None
    suffix = identity.name if identity.kind == "user" else f"{identity.kind}-{identity.name}"
    try:
        other = check_name(f"{trust_domain}-{suffix}", "profile name")
    except PKIError:
        raise taken(default, existing) from None
    second = load_profile_or_none(other)
    if second is None:
        return other, None, existing
    if _same_owner(second, identity, gateway):
        return other, second, existing
    raise taken(other, second)


def login(
    url: str, code_text: str, ca_fingerprint: str, *, profile_name: str | None = None, force: bool = False
) -> LoginResult:
    """Enroll this machine: pin the CA, generate a key here, send a CSR with the code, store the profile.

    The profile name is settled before the code is sent, so a refusal leaves the single-use code unspent."""
    base = gateway_base(url)
    code = parse_code(code_text)
    pinned = fetch_pinned_ca(base, ca_fingerprint)
    spiffe = code.spiffe_id(pinned.trust_domain)
    name, replaced, kept = choose_profile_name(profile_name, pinned.trust_domain, spiffe, base, force=force)
    key = generate_private_key()
    with tempfile.TemporaryDirectory(prefix="raywarden-ca-") as tmp:
        ca_file = Path(tmp) / "access-ca.crt"
        ca_file.write_bytes(pinned.pem)
        answer = _post(
            base + "/raywarden/v1/enroll",
            {"code": code.reveal(), "csr": build_csr(key, spiffe).decode()},
            verify=str(ca_file),
        )
    cert_pem = str(answer["certificate_pem"]).encode()
    _check_issued(cert_pem, spiffe)
    if replaced is not None:
        delete_profile(replaced)
    profile = Profile(name, base, str(spiffe), None)
    profile.save(key_pem=private_key_pem(key), cert_pem=cert_pem, ca_pem=pinned.pem)
    set_current(name)
    return LoginResult(profile, replaced, kept)


def renew_remote(profile: Profile) -> x509.Certificate:
    """Renew through the gateway, authenticated by the current certificate; a new key is made locally."""
    spiffe = SpiffeId.parse(profile.identity)
    key = generate_private_key()
    answer = _post(
        profile.gateway_url + "/raywarden/v1/renew",
        {"csr": build_csr(key, spiffe).decode()},
        verify=str(profile.ca_path),
        cert=(str(profile.cert_path), str(profile.key_path)),
    )
    cert_pem = str(answer["certificate_pem"]).encode()
    cert = _check_issued(cert_pem, spiffe)
    profile.replace_certificate(key_pem=private_key_pem(key), cert_pem=cert_pem)
    return cert


def request_token(profile: Profile, ttl_s: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {} if ttl_s is None else {"ttl_seconds": ttl_s}
    return _post(
        profile.gateway_url + "/raywarden/v1/token",
        body,
        verify=str(profile.ca_path),
        cert=(str(profile.cert_path), str(profile.key_path)),
    )


def _check_issued(cert_pem: bytes, spiffe: SpiffeId) -> x509.Certificate:
    from raywarden.pki.certs import spiffe_id_of

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise PKIError("the gateway returned an unreadable certificate") from None
    if spiffe_id_of(cert) != spiffe:
        raise PKIError(f"the gateway issued a certificate for {spiffe_id_of(cert)}, not {spiffe}")
    return cert


def _post(url: str, body: dict[str, Any], *, verify: str, cert: tuple[str, str] | None = None) -> dict[str, Any]:
    try:
        resp = requests.post(url, json=body, verify=verify, cert=cert, timeout=TIMEOUT_S)
    except requests.exceptions.SSLError as exc:
        raise PKIError(
            f"TLS with the gateway failed: {exc}",
            hint="the gateway's certificate does not match the pinned CA or the URL's host name",
        ) from None
    except requests.RequestException as exc:
        raise ConfigError(f"cannot reach the gateway: {type(exc).__name__}", hint="is the cluster up?") from None
    try:
        data: dict[str, Any] = resp.json()
    except ValueError:
        data = {}
    if resp.status_code != 200:
        if isinstance(data, dict) and data:
            raise refusal(resp.status_code, data)
        raise GatewayRequestError(resp.status_code, f"gateway answered {resp.status_code}: {resp.reason}")
    return data
