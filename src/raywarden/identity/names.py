"""How principals are named: ``spiffe://TD/user/NAME`` and ``spiffe://TD/sa/NAME`` for the identity store's
principals, and ``spiffe://TD/oidc/NAMESPACE/NAME`` for people an OIDC issuer vouches for.

An issuer's people are kept apart from local users and from other issuers' people (docs/identities.md): its
namespace is one more SPIFFE path segment, so no local name (which has no ``/``) and no other issuer's person
can equal it. Every segment keeps to the SPIFFE path rules (letters, digits, ``.``, ``-``, ``_``; never
``.`` or ``..`` alone), as the names of pki.spiffe do.
"""

from __future__ import annotations

from dataclasses import dataclass

from raywarden.errors import PKIError
from raywarden.pki.spiffe import NAME_RE, TRUST_DOMAIN_RE, check_name

OIDC_SEGMENT = "oidc"


@dataclass(frozen=True)
class OidcName:
    """A person from an OIDC issuer that does not merge with local users."""

    trust_domain: str
    namespace: str
    name: str

    def __post_init__(self) -> None:
        if not TRUST_DOMAIN_RE.fullmatch(self.trust_domain):
            raise PKIError(f"invalid trust domain {self.trust_domain!r}")
        check_name(self.namespace, "OIDC namespace")
        check_name(self.name, "OIDC user name")

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/{OIDC_SEGMENT}/{self.namespace}/{self.name}"

    @property
    def qualified(self) -> str:
        """The principal's ``name`` in Cedar and on pages: ``NAMESPACE/NAME``, which no local name can be."""
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, uri: str) -> OidcName | None:
        """The OIDC person ``uri`` names, or None when it is not of that form."""
        prefix = "spiffe://"
        if not uri.startswith(prefix) or "?" in uri or "#" in uri:
            return None
        trust_domain, _, path = uri[len(prefix) :].partition("/")
        parts = path.split("/")
        if len(parts) != 3 or parts[0] != OIDC_SEGMENT:
            return None
        try:
            return cls(trust_domain, parts[1], parts[2])
        except PKIError:
            return None


def principal_name(spiffe_id: str) -> str:
    """What policies see as ``principal.name``: the store's name, or ``NAMESPACE/NAME`` for an OIDC person."""
    oidc = OidcName.parse(spiffe_id)
    return oidc.qualified if oidc is not None else spiffe_id.rsplit("/", 1)[-1]


def principal_kind(spiffe_id: str) -> str:
    """``sa`` for a service account, ``user`` for a person (local or from an OIDC issuer)."""
    path = spiffe_id.removeprefix("spiffe://").partition("/")[2]
    return "sa" if path.startswith("sa/") else "user"


def is_name(text: str) -> bool:
    return bool(NAME_RE.fullmatch(text))
