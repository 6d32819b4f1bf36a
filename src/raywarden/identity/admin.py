"""Administration on the head host: people and service accounts, enrollment codes, revocation.

Runs against the local state dir (whoever can read it holds the CA keys anyway), writes the identity store
directly and records every change in the audit log with the local actor. The gateway reads the store on
every request, so a change here is in force on the next request.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from raywarden.audit.cluster import open_cluster_audit
from raywarden.cluster.privsep import require_room_for
from raywarden.errors import RaywardenError, UsageError
from raywarden.gateway.tokens import IssuedToken, TokenAuthority, expires_iso
from raywarden.identity.apikeys import KEY_PREFIX, ApiKeyInfo, ApiKeys, NewApiKey, check_app_name
from raywarden.identity.enrollment import EnrollmentCode, create_code
from raywarden.identity.renewal import RenewalStore
from raywarden.identity.store import IdentityError, IdentityStore, Principal
from raywarden.pki.spiffe import SpiffeId, check_name
from raywarden.state import StateDir

Kind = Literal["user", "sa"]
# How a policy names a group: `principal in Raywarden::Group::"developers"` (or in a `when` clause).
_GROUP_REFERENCE = re.compile(r'Group::"([^"\\]*)"')


def policy_groups(state: StateDir) -> set[str]:
    """Every group the policy set in force names (the shipped pack and the state dir's policy files)."""
    from raywarden.policy.engine import policy_files

    return {m for _, text in policy_files(state.policy_dir) for m in _GROUP_REFERENCE.findall(text)}


def local_actor() -> str:
    """``local:UID``, plus the identity of the current client profile when there is one."""
    actor = f"local:{os.getuid()}"
    try:
        from raywarden.client.profile import load_profile

        return f"{actor} ({load_profile().identity})"
    except (RaywardenError, OSError, ValueError, KeyError):  # no profile: the uid alone names the actor
        return actor


@dataclass(frozen=True)
class NewCode:
    principal: Principal
    code: EnrollmentCode
    expires_at: float


@dataclass(frozen=True)
class RevokedCertificates:
    """What `revoke cert` ended: ``serials`` are the certificate and those renewed from it, revoked now."""

    principal: str
    serial: str
    serials: tuple[str, ...]


class IdentityAdmin:
    def __init__(self, state: StateDir, actor: str | None = None) -> None:
        self.state = state.require()
        self.config = state.load_config()
        self.store = IdentityStore.open(state.identity_db)
        self.actor = actor or local_actor()

    def spiffe(self, kind: Kind, name: str) -> SpiffeId:
        check_name(name, "user name" if kind == "user" else "service account name")
        return SpiffeId(self.config.trust_domain, kind, name)

    def get(self, kind: Kind, name: str) -> Principal:
        principal = self.store.get(str(self.spiffe(kind, name)))
        if principal is None:
            what = "user" if kind == "user" else "service account"
            raise IdentityError(f"no {what} named {name!r}", hint=f"see `raywarden {kind} list`")
        return principal

    def _audit(self, event: str, principal: str, **fields: Any) -> None:
        with open_cluster_audit(self.state, self.config) as audit:
            audit.append({"kind": "identity", "event": event, "principal": principal, "actor": self.actor, **fields})

    def _code_ttl(self, ttl_s: float | None) -> float:
        ttl = self.config.enrollment_code_hours * 3600 if ttl_s is None else ttl_s
        if not 0 < ttl <= 30 * 86400:
            raise UsageError("an enrollment code lives between 1 second and 30 days")
        return ttl

    def _require_room(self, spiffe_id: str, what: str) -> None:
        """A cluster whose Ray shares the control plane's OS user admits its one admin only (docs/threat-model.md)."""
        require_room_for(self.state, self.config, spiffe_id, what)

    def known_groups(self) -> set[str]:
        """Groups that exist: named by a policy, or held by someone."""
        held = {g for p in self.store.list_principals() for g in p.groups}
        return policy_groups(self.state) | held

    def unreferenced(self, groups: list[str]) -> list[str]:
        """Of ``groups``, those no policy names: membership in them grants nothing (yet)."""
        named = policy_groups(self.state)
        return sorted(g for g in set(groups) if g not in named)

    def check_groups(self, groups: list[str], *, create: bool) -> None:
        """Refuse a group nobody has heard of (a typo grants nothing, silently), unless ``create``."""
        for group in groups:
            check_name(group, "group name")
        if create:
            return
        known = self.known_groups()
        for group in groups:
            if group in known:
                continue
            close = difflib.get_close_matches(group, sorted(known), n=2, cutoff=0.6)
            guess = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise UsageError(
                f"unknown group {group!r}: no policy names it and nobody is in it",
                hint=f"{guess}known groups: {', '.join(sorted(known)) or 'none'}. To start a new group, pass "
                "--create-group (it grants nothing until a policy names it)",
            )

    def add(
        self, kind: Kind, name: str, groups: list[str], *, code_ttl_s: float | None = None, create_groups: bool = False
    ) -> NewCode:
        self.check_groups(groups, create=create_groups)
        ttl = self._code_ttl(code_ttl_s)
        spiffe = self.spiffe(kind, name)
        self._require_room(str(spiffe), f"add {spiffe}")
        principal = self.store.add_principal(spiffe, groups, created_by=self.actor)
        self._audit(f"{'user' if kind == 'user' else 'sa'}.create", str(spiffe), groups=list(principal.groups))
        return self._new_code(principal, ttl)

    def new_code(self, kind: Kind, name: str, *, code_ttl_s: float | None = None) -> NewCode:
        return self._new_code(self.get(kind, name), self._code_ttl(code_ttl_s))

    def _new_code(self, principal: Principal, ttl: float) -> NewCode:
        self._require_room(principal.spiffe_id, f"enroll {principal.spiffe_id}")
        code, expires = create_code(self.store, principal, ttl_s=ttl, created_by=self.actor)
        self._audit(
            "enrollment.create", principal.spiffe_id, enrollment_id=code.code_id, expires_at=expires_iso(expires)
        )
        return NewCode(principal, code, expires)

    def disable(self, kind: Kind, name: str) -> dict[str, int]:
        principal = self.get(kind, name)
        counts = self.store.disable_and_revoke(principal.spiffe_id, f"disabled by {self.actor}")
        self._audit("disable", principal.spiffe_id, revoked=counts)
        return counts

    def enable(self, kind: Kind, name: str, *, code_ttl_s: float | None = None) -> NewCode:
        """Enable again. Everything it held was revoked when it was disabled, so it gets a fresh code."""
        principal = self.get(kind, name)
        self._require_room(principal.spiffe_id, f"enable {principal.spiffe_id}")
        self.store.set_disabled(principal.spiffe_id, False)
        self._audit("enable", principal.spiffe_id)
        return self._new_code(self.get(kind, name), self._code_ttl(code_ttl_s))

    def change_groups(
        self, kind: Kind, name: str, add: list[str], remove: list[str], *, create_groups: bool = False
    ) -> Principal:
        for group in remove:
            check_name(group, "group name")
        self.check_groups(add, create=create_groups)
        current = self.get(kind, name)
        missing = sorted(set(remove) - set(current.groups))
        if missing:
            raise UsageError(
                f"{name} is not in group(s) {', '.join(missing)}",
                hint=f"{name}'s groups: {', '.join(current.groups) or 'none'}",
            )
        principal = self.store.change_groups(current.spiffe_id, add, remove)
        self._audit(
            "groups.change",
            principal.spiffe_id,
            added=sorted(add),
            removed=sorted(remove),
            groups=list(principal.groups),
        )
        return principal

    def sa_token(self, name: str, ttl_s: float | None) -> IssuedToken:
        principal = self.get("sa", name)
        if principal.disabled:
            raise UsageError(f"service account {name!r} is disabled", hint=f"`raywarden sa enable {name}`")
        self._require_room(principal.spiffe_id, f"issue a token to {principal.spiffe_id}")
        authority = TokenAuthority.for_state(self.state, self.config)
        issued = authority.issue(principal.spiffe_id, 3600.0 if ttl_s is None else ttl_s)
        self.store.record_token(issued.jti, principal.spiffe_id, issued.expires_at, issued_by=self.actor)
        self._audit("token.issue", principal.spiffe_id, jti=issued.jti, expires_at=expires_iso(issued.expires_at))
        return issued

    def set_renewal(self, name: str, grace: dt.timedelta | None) -> Principal:
        """Let a service account renew its certificate within ``grace`` after it expired, by proving possession
        of its key (docs/identities.md "Renewal"); None: only before it expires, as people do."""
        principal = self.get("sa", name)
        RenewalStore(self.store).set_renew_grace(principal.spiffe_id, grace)
        self._audit("sa.renewal", principal.spiffe_id, renew_grace_s=None if grace is None else grace.total_seconds())
        return principal

    # -- API keys (Serve's data path, docs/serve.md) ----------------------------------------------------------

    def api_key_create(self, name: str, apps: list[str], ttl_s: float) -> NewApiKey:
        principal = self.get("sa", name)
        if principal.disabled:
            raise UsageError(f"service account {name!r} is disabled", hint=f"`raywarden sa enable {name}`")
        for app in apps:
            check_app_name(app)
        self._require_room(principal.spiffe_id, f"give an API key to {principal.spiffe_id}")
        new = ApiKeys(self.store).create(principal.spiffe_id, apps, ttl_s, created_by=self.actor)
        self._audit(
            "api_key.create", principal.spiffe_id, key_id=new.key_id, apps=list(new.apps),
            expires_at=expires_iso(new.expires_at),
        )  # fmt: skip
        return new

    def api_keys(self, name: str | None) -> list[ApiKeyInfo]:
        return ApiKeys(self.store).keys_of(None if name is None else self.get("sa", name).spiffe_id)

    def api_key_revoke(self, key_id: str, reason: str) -> str:
        key_id = key_id.strip().removeprefix(KEY_PREFIX).split("_", 1)[0]  # an id, or a whole key pasted
        keys = ApiKeys(self.store)
        info = keys.get(key_id)
        if info is None:
            raise IdentityError(f"no API key with id {key_id!r}", hint="`raywarden sa key list` shows the ids")
        if not keys.revoke(key_id, reason):
            raise IdentityError(f"API key {key_id} is already revoked")
        self._audit("revoke.api_key", info.spiffe_id, key_id=key_id, reason=reason)
        return info.spiffe_id

    def revoke_cert(self, serial: str, reason: str) -> RevokedCertificates:
        """Revoke the certificate and every certificate renewed from it (docs/identities.md "Revocation"): a
        copied key may have been renewed into a certificate whose serial nobody else knows."""
        serial = serial.strip().lower().removeprefix("0x").replace(":", "")
        owner = self.store.certificate_owner(serial)
        if owner is None:
            raise IdentityError(
                f"no certificate with serial {serial} was issued by this cluster",
                hint="serials are hex, as shown by `raywarden user show NAME`",
            )
        serials = RenewalStore(self.store).revoke_lineage(serial, reason)
        if not serials:
            raise IdentityError(f"certificate {serial} and every certificate renewed from it are already revoked")
        self._audit(
            "revoke.cert", owner[0], serial=serial, reason=reason, revoked_serials=serials, revoked_count=len(serials)
        )
        return RevokedCertificates(owner[0], serial, tuple(serials))

    def revoke_token(self, jti: str, reason: str) -> str:
        owner = self.store.token_owner(jti.strip())
        if owner is None:
            raise IdentityError(
                f"no token with id {jti} was issued by this cluster",
                hint="token ids are the `jti` shown by `raywarden token --json` or `user show`",
            )
        if not self.store.revoke_token(jti.strip(), reason):
            raise IdentityError(f"token {jti} is already revoked")
        self._audit("revoke.token", owner[0], jti=jti.strip(), reason=reason)
        return owner[0]

    def describe(self, principal: Principal) -> dict[str, Any]:
        now = time.time()
        certs = self.store.certificates_of(principal.spiffe_id)
        tokens = self.store.tokens_of(principal.spiffe_id)
        codes = self.store.enrollments_of(principal.spiffe_id)
        grace = RenewalStore(self.store).renew_grace(principal.spiffe_id)
        return {
            "name": principal.name,
            "kind": principal.kind,
            "spiffe_id": principal.spiffe_id,
            "groups": list(principal.groups),
            "disabled": principal.disabled,
            "renew_grace_s": None if grace is None else grace.total_seconds(),
            "certificates": certs,
            "tokens": [
                {**t, "expires_at": expires_iso(float(t["expires_at"] or 0))}
                for t in tokens
                if t["revoked_at"] or float(t["expires_at"] or 0) > now - 86400
            ],
            "enrollments": [
                {
                    "enrollment_id": c["code_id"],
                    "created_at": c["created_at"],
                    "expires_at": expires_iso(float(c["expires_at"] or 0)),
                    "used_at": c["used_at"],
                    "revoked_at": c["revoked_at"],
                    "failures": c["failures"],
                }
                for c in codes
            ],
        }
