"""Who a person an OIDC issuer vouches for is at this gateway, and whether this cluster may admit them.

The issuer's people are ``spiffe://TD/oidc/NAMESPACE/NAME`` unless the issuer merges them with local users
(gateway/oidc.py). A registered principal keeps its store groups and a disabled one is refused. A person
nobody registered is admitted only through an issuer that allows it, and never on a cluster whose Ray shares
the control plane's OS user (cluster/privsep.py): there any job can read the control plane's keys, so the
cluster admits its one admin only. Bearer ID tokens (authn.py) and browser sign-in (web/signin.py) both
decide here.
"""

from __future__ import annotations

from dataclasses import dataclass

from raywarden.cluster.privsep import principal_problem
from raywarden.errors import AuthenticationError
from raywarden.gateway.oidc import OidcIdentity
from raywarden.identity.store import IdentityStore
from raywarden.state import StateDir

HINT_SHARED_USER = (
    "ask an administrator: as root, `raywarden up` runs Ray as an OS user of its own and admits everyone the "
    "policies allow; `raywarden up --shared-os-user` admits them while accepting that jobs can read its keys"
)


class AdmissionRefused(AuthenticationError):
    """The person is who they claim, but this cluster does not admit them: a 403 that says why."""

    def __init__(self, reason: str, public: str, hint: str) -> None:
        super().__init__(reason, public=public)
        self.hint = hint


@dataclass(frozen=True)
class OidcPerson:
    spiffe_id: str
    name: str  # principal.name: NAME when merged with local users, NAMESPACE/NAME otherwise
    groups: tuple[str, ...]
    registered: bool


def admit(
    found: OidcIdentity, trust_domain: str, store: IdentityStore, single_principal: StateDir | None
) -> OidcPerson:
    """The principal ``found`` speaks for, or AuthenticationError. ``single_principal``: the state dir of a
    cluster that admits one principal (Ray shares the control plane's OS user), None elsewhere."""
    spiffe = found.spiffe_id(trust_domain)
    principal = store.get(spiffe)
    if principal is None and not found.allow_unregistered:
        raise AuthenticationError(
            f"{spiffe} (from {found.issuer}) is not registered and the issuer admits registered users only"
        )
    if principal is not None and principal.disabled:
        raise AuthenticationError(f"principal {spiffe} is disabled")
    if principal is None and single_principal is not None:
        problem = principal_problem(single_principal, adding=spiffe)
        if problem is not None:
            raise AdmissionRefused(
                f"{spiffe} (from {found.issuer}, not registered) refused: this cluster's Ray shares the control "
                f"plane's OS user, so it admits one principal, and {problem}",
                "this cluster admits its administrator only: its Ray runs as the control plane's own OS user "
                "(it was started without root), so every job could read the control plane's keys",
                HINT_SHARED_USER,
            )
    groups = tuple(sorted(set(found.groups) | set(principal.groups if principal else ())))
    return OidcPerson(spiffe, found.principal_name, groups, principal is not None)
