"""SPIFFE IDs: ``spiffe://TRUST_DOMAIN/user/NAME`` and friends, parsed strictly."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

from raywarden.errors import PKIError

Kind = Literal["user", "sa", "node", "gateway"]
KINDS: tuple[Kind, ...] = ("user", "sa", "node", "gateway")
# Names are lowercase so that "Alice" and "alice" can never be two identities.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,249}$")


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.fullmatch(name):
        raise PKIError(
            f"invalid {what} {name!r}",
            hint="use 1-63 lowercase letters, digits, '.', '-' or '_', starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    kind: Kind
    name: str = ""

    def __post_init__(self) -> None:
        if not TRUST_DOMAIN_RE.fullmatch(self.trust_domain):
            raise PKIError(f"invalid trust domain {self.trust_domain!r}")
        if self.kind == "gateway":
            if self.name:
                raise PKIError("the gateway identity has no name")
        else:
            check_name(self.name)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        prefix = "spiffe://"
        if not uri.startswith(prefix) or "?" in uri or "#" in uri:
            raise PKIError(f"not a SPIFFE ID: {uri!r}")
        trust_domain, _, path = uri[len(prefix) :].partition("/")
        parts = path.split("/")
        if parts == ["gateway"]:
            return cls(trust_domain, "gateway")
        if len(parts) != 2 or parts[0] not in KINDS or parts[0] == "gateway":
            raise PKIError(f"unsupported SPIFFE ID path in {uri!r}")
        return cls(trust_domain, cast(Kind, parts[0]), parts[1])

    def __str__(self) -> str:
        if self.kind == "gateway":
            return f"spiffe://{self.trust_domain}/gateway"
        return f"spiffe://{self.trust_domain}/{self.kind}/{self.name}"
