"""Principals as people type them: ``alice``, ``sa:ci-bot``, ``node:worker-1`` or a full SPIFFE ID."""

from __future__ import annotations

from raywarden.errors import PKIError, UsageError
from raywarden.identity.names import OidcName
from raywarden.pki.spiffe import Kind, SpiffeId

PRINCIPAL_FORMS = (
    "a user as NAME (alice), a person from an OIDC issuer as NAMESPACE/NAME (corp/alice), a service account as "
    "sa:NAME, a node as node:NAME, or a full SPIFFE ID (spiffe://TRUST_DOMAIN/user/alice)"
)
_KINDS: dict[str, Kind] = {"user": "user", "sa": "sa", "node": "node"}


def resolve_principal(text: str, trust_domain: str) -> str:
    """The SPIFFE ID that ``text`` names in ``trust_domain``: a bare name is a user of this trust domain."""
    value = text.strip()
    try:
        if value.startswith("spiffe://"):
            oidc = OidcName.parse(value)
            return oidc.spiffe_id if oidc is not None else str(SpiffeId.parse(value))
        if value == "gateway":
            return str(SpiffeId(trust_domain, "gateway"))
        if "/" in value and ":" not in value:
            namespace, _, name = value.partition("/")
            return OidcName(trust_domain, namespace, name).spiffe_id
        kind, sep, name = value.partition(":")
        if not sep:
            return str(SpiffeId(trust_domain, "user", value))
        if kind not in _KINDS:
            raise UsageError(f"{text!r} is not a principal: unknown kind {kind!r}", hint=f"write {PRINCIPAL_FORMS}")
        return str(SpiffeId(trust_domain, _KINDS[kind], name))
    except PKIError as exc:
        raise UsageError(f"{text!r} is not a principal: {exc.message}", hint=f"write {PRINCIPAL_FORMS}") from None
