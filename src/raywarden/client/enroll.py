"""Client side of enrollment: pin the access CA, redeem a one-time code with a locally generated key,
renew a remote profile's certificate, and get a short-lived bearer token from the gateway."""

from __future__ import annotations

import contextlib
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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from raywarden.client.answers import refusal
from raywarden.client.profile import Profile, delete_profile, load_profile_or_none, set_current
from raywarden.errors import ConfigError, GatewayRequestError, PKIError, UsageError
from raywarden.files import read_private
from raywarden.identity.enrollment import parse_code
from raywarden.pki.certs import cert_pem, fingerprint
from raywarden.pki.csr import build_csr
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.possession import possession_message, sign_possession
from raywarden.pki.rollover import MAX_CHAIN, follow_chain, parse_rollover, predecessors
from raywarden.pki.spiffe import SpiffeId, check_name

TIMEOUT_S = 30.0
# The CA answer holds a few certificates per rotation: a quarter of a megabyte is years of rotations.
MAX_CA_ANSWER = 256 * 1024


@dataclass(frozen=True)
class PinnedCA:
    pem: bytes  # every CA to trust, the current one first (two while a CA rotation overlaps them)
    sha256: str  # the current CA's
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


def fetch_ca_answer(url: str) -> dict[str, Any]:
    """``GET /raywarden/v1/ca`` over TLS that is *not* verified, sending nothing: nothing in the answer is
    believed until it is checked against a CA pinned or trusted already (``verified_trust``)."""
    parts = urlsplit(gateway_base(url))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # deliberate: the pin, or the CA trusted already, authenticates the answer
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, timeout=TIMEOUT_S, context=ctx)
    try:
        conn.request("GET", "/raywarden/v1/ca", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        data = resp.read(MAX_CA_ANSWER)
    except (OSError, http.client.HTTPException) as exc:
        raise ConfigError(f"cannot reach the gateway at {url}: {exc}", hint="check the URL and your network") from None
    finally:
        conn.close()
    try:
        body = json.loads(data)
        x509.load_pem_x509_certificate(str(body["access_ca_pem"]).encode())
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{url} did not answer like a raywarden gateway (HTTP {resp.status})") from None
    if not isinstance(body, dict):
        raise ConfigError(f"{url} did not answer like a raywarden gateway (HTTP {resp.status})")
    return body


def verified_trust(
    answer: dict[str, Any], trusted: list[x509.Certificate], trust_domain: str
) -> list[x509.Certificate]:
    """The access CAs to trust after ``answer``, the current one first.

    The answer's current CA must be ``trusted[0]`` (the CA this client trusts now) or reached from it through
    rollover statements, each signed by the CA before (pki/rollover.py): an answer can never move a client
    back to an older CA. While the gateway still lists them, CAs on that path, CAs the client trusted already
    and predecessors the current CA signed for stay trusted too (the overlap of a rotation). Raises PKIError
    when the answer's CA cannot be reached.
    """
    try:
        current = x509.load_pem_x509_certificate(str(answer["access_ca_pem"]).encode())
        raw = answer.get("rollovers") or []
        listed = answer.get("trusted_pem") or []
        if not isinstance(raw, list) or not isinstance(listed, list) or len(listed) > 8:
            raise ValueError("rollovers and trusted_pem must be short lists")
        statements = [parse_rollover(value) for value in raw[: MAX_CHAIN + 1]]
        listed_fps = {fingerprint(x509.load_pem_x509_certificate(str(pem).encode())) for pem in listed}
    except (ValueError, KeyError, TypeError):
        raise PKIError("the gateway's CA answer is malformed") from None
    path = follow_chain(trusted[:1], statements, fingerprint(current), role="access", trust_domain=trust_domain)
    kept = [path[-1]]
    vouched = predecessors(path[-1], statements, role="access", trust_domain=trust_domain)
    for candidate in [*reversed(path[:-1]), *trusted[1:], *vouched]:
        fp = fingerprint(candidate)
        if fp in listed_fps and fp not in {fingerprint(c) for c in kept}:
            kept.append(candidate)
    return kept


def fetch_pinned_ca(url: str, expected_sha256: str) -> PinnedCA:
    """First contact: the gateway's CA answer, accepted only if the pinned fingerprint is its current CA or a
    CA from which verified rollover statements lead to it. On a mismatch nothing is sent."""
    expected = normalize_fingerprint(expected_sha256)
    answer = fetch_ca_answer(url)
    pinned = _find_pinned(answer, expected)
    if pinned is None:
        actual = fingerprint(x509.load_pem_x509_certificate(str(answer["access_ca_pem"]).encode()))
        raise PKIError(
            f"the gateway's access CA has fingerprint {actual}, not the pinned {expected}; nothing was sent",
            hint="someone may be intercepting the connection, or the fingerprint "
            "is from another cluster: check it with your administrator",
        )
    trust_domain = ca_trust_domain(pinned)
    cas = verified_trust(answer, [pinned], trust_domain)
    return PinnedCA(b"".join(cert_pem(c) for c in cas), fingerprint(cas[0]), trust_domain)


def _find_pinned(answer: dict[str, Any], expected: str) -> x509.Certificate | None:
    """The certificate in the answer whose SHA-256 is the pin: the current CA, or one a rollover names."""
    pems = [answer.get("access_ca_pem")]
    for value in answer.get("rollovers") or []:
        body = value.get("rollover") if isinstance(value, dict) else None
        if isinstance(body, dict):
            pems += [body.get("old_ca_pem"), body.get("new_ca_pem")]
    for pem in pems:
        try:
            cert = x509.load_pem_x509_certificate(str(pem).encode())
        except ValueError:
            continue
        if hmac.compare_digest(fingerprint(cert), expected):
            return cert
    return None


def ca_trust_domain(ca: x509.Certificate) -> str:
    """The trust domain a raywarden CA certificate names (its one URI SAN, ``spiffe://TRUST_DOMAIN``)."""
    try:
        san = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        raise PKIError("the pinned CA does not name a trust domain (not a raywarden CA)") from None
    if not uri.startswith("spiffe://") or "/" in uri.removeprefix("spiffe://"):
        raise PKIError("the pinned CA does not name a trust domain (not a raywarden CA)")
    return uri.removeprefix("spiffe://")


def refresh_trust(profile: Profile, answer: dict[str, Any] | None = None) -> bool:
    """Learn a rotated access CA through the CAs this profile trusts. ``answer``: the ``ca`` part of a renewal
    answer; without it the gateway's ``/raywarden/v1/ca`` is fetched. Returns True when the CA file changed."""
    if answer is None:
        answer = fetch_ca_answer(profile.gateway_url)
    trusted = profile.trusted_cas()
    cas = verified_trust(answer, trusted, SpiffeId.parse(profile.identity).trust_domain)
    if [fingerprint(c) for c in cas] == [fingerprint(c) for c in trusted]:
        return False
    profile.replace_cas(cas)
    return True


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
    issued_pem = str(answer["certificate_pem"]).encode()
    _check_issued(issued_pem, spiffe)
    if replaced is not None:
        delete_profile(replaced)
    profile = Profile(name, base, str(spiffe), None)
    profile.save(key_pem=private_key_pem(key), cert_pem=issued_pem, ca_pem=pinned.pem)
    set_current(name)
    return LoginResult(profile, replaced, kept)


def renew_remote(profile: Profile) -> x509.Certificate:
    """Renew through the gateway, authenticated by the current certificate; a new key is made locally."""
    spiffe = SpiffeId.parse(profile.identity)
    key = generate_private_key()
    answer = profile_post(profile, "/raywarden/v1/renew", {"csr": build_csr(key, spiffe).decode()}, client_cert=True)
    return _store_renewal(profile, spiffe, key, answer)


def renew_expired(profile: Profile) -> x509.Certificate:
    """A renewable service account's expired certificate: its key signs the gateway's single-use challenge
    (pki/possession.py) instead of authenticating the TLS connection, which an expired certificate cannot."""
    spiffe = SpiffeId.parse(profile.identity)
    old_cert = profile.certificate()
    old_key = serialization.load_pem_private_key(read_private(profile.key_path), password=None)
    if not isinstance(old_key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{profile.key_path} is not an ECDSA key", hint="log in again")
    presented = {"certificate_pem": profile.cert_path.read_text()}
    challenge = profile_post(profile, "/raywarden/v1/renew/expired", presented, client_cert=False)
    nonce = str(challenge.get("challenge", ""))
    key = generate_private_key()
    csr = build_csr(key, spiffe).decode()
    message = possession_message(old_cert, csr, nonce, spiffe.trust_domain)
    proof = {**presented, "csr": csr, "challenge": nonce, "signature": sign_possession(old_key, message)}
    answer = profile_post(profile, "/raywarden/v1/renew/expired", proof, client_cert=False)
    return _store_renewal(profile, spiffe, key, answer)


def _store_renewal(
    profile: Profile, spiffe: SpiffeId, key: ec.EllipticCurvePrivateKey, answer: dict[str, Any]
) -> x509.Certificate:
    issued_pem = str(answer["certificate_pem"]).encode()
    cert = _check_issued(issued_pem, spiffe)
    profile.replace_certificate(key_pem=private_key_pem(key), cert_pem=issued_pem)
    ca_answer = answer.get("ca")
    if isinstance(ca_answer, dict):
        # A renewal answer says which CAs the gateway trusts now; a rotation is learnt here at the latest.
        with contextlib.suppress(PKIError):
            refresh_trust(profile, ca_answer)
    return cert


def request_token(profile: Profile, ttl_s: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {} if ttl_s is None else {"ttl_seconds": ttl_s}
    return profile_post(profile, "/raywarden/v1/token", body, client_cert=True)


def profile_post(profile: Profile, path: str, body: dict[str, Any], *, client_cert: bool) -> dict[str, Any]:
    """POST as the profile. When TLS fails, the gateway may have a certificate from a rotated access CA:
    learn it through the CAs trusted here (``refresh_trust``) and try once more."""
    cert = (str(profile.cert_path), str(profile.key_path)) if client_cert else None
    try:
        return _post(profile.gateway_url + path, body, verify=str(profile.ca_path), cert=cert)
    except TlsFailure:
        try:
            changed = refresh_trust(profile)
        except (ConfigError, PKIError):
            changed = False
        if not changed:
            raise
    return _post(profile.gateway_url + path, body, verify=str(profile.ca_path), cert=cert)


def _check_issued(issued_pem: bytes, spiffe: SpiffeId) -> x509.Certificate:
    from raywarden.pki.certs import spiffe_id_of

    try:
        cert = x509.load_pem_x509_certificate(issued_pem)
    except ValueError:
        raise PKIError("the gateway returned an unreadable certificate") from None
    if spiffe_id_of(cert) != spiffe:
        raise PKIError(f"the gateway issued a certificate for {spiffe_id_of(cert)}, not {spiffe}")
    return cert


class TlsFailure(PKIError):
    """The TLS handshake with the gateway failed (its certificate, or ours, was not accepted)."""


def _post(url: str, body: dict[str, Any], *, verify: str, cert: tuple[str, str] | None = None) -> dict[str, Any]:
    try:
        resp = requests.post(url, json=body, verify=verify, cert=cert, timeout=TIMEOUT_S)
    except requests.exceptions.SSLError as exc:
        raise TlsFailure(
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
