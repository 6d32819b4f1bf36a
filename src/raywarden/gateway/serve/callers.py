"""Who calls a Serve application: everything the API listener accepts (client certificate, bearer token, OIDC
ID token; gateway/authn.py), plus API keys of service accounts (``Authorization: Bearer rwk_...``, what
OpenAI-style clients send; identity/apikeys.py). Browser session cookies are not credentials here."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope

from raywarden.errors import AuthenticationError
from raywarden.gateway import responses
from raywarden.gateway.authn import Authenticator, Identity, MissingCredential
from raywarden.gateway.middleware import header
from raywarden.gateway.tls import PEER_CERT_STATE_KEY
from raywarden.identity.apikeys import KEY_PREFIX, ApiKeys

API_KEY_METHOD = "api_key"
HINT = (
    "send `Authorization: Bearer rwk_...` with an API key (`raywarden sa key create`), a bearer token from "
    "`raywarden token`, or a client certificate issued by this cluster's access CA"
)


@dataclass(frozen=True)
class Caller:
    identity: Identity
    # The applications an API key is scoped to; None for other credentials and for unscoped keys.
    key_apps: tuple[str, ...] | None = None


class ServeAuthenticator:
    def __init__(self, authenticator: Authenticator, keys: ApiKeys) -> None:
        self.authenticator = authenticator
        self.keys = keys

    async def authenticate(self, scope: Scope, source: str) -> Caller:
        """The caller, or a 401 Refusal whose precise reason is for the audit log only."""
        try:
            return await self._caller(scope, source)
        except MissingCredential as exc:
            raise responses.Refusal(401, "authentication required", reason=exc.reason, hint=HINT) from None
        except AuthenticationError as exc:
            raise responses.Refusal(401, "authentication failed", reason=exc.reason, hint=HINT) from None

    async def _caller(self, scope: Scope, source: str) -> Caller:
        der = scope.get("state", {}).get(PEER_CERT_STATE_KEY)
        authorization = header(scope, b"authorization")
        if not der and authorization:
            scheme, _, value = authorization.strip().partition(" ")
            value = value.strip()
            if scheme.lower() == "bearer" and value.startswith(KEY_PREFIX):
                return self._from_key(value, source)
        return Caller(await self.authenticator.authenticate(der, authorization, None))

    def _from_key(self, presented: str, source: str) -> Caller:
        key = self.keys.verify(presented)
        self.keys.touch(key.key_id, source)
        p = key.principal
        identity = Identity(p.spiffe_id, p.kind, p.name, p.groups, API_KEY_METHOD, key.key_id, key.created_at)
        return Caller(identity, key.apps or None)
