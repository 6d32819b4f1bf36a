"""One error hierarchy: every raywarden failure explains itself and says what to do next."""

from __future__ import annotations


class RaywardenError(Exception):
    """Base of every error raywarden raises on purpose.

    ``hint`` tells the user what to do about it; the CLI prints both and exits non-zero.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class ConfigError(RaywardenError):
    """Missing or invalid configuration, state dir or profile."""


class PKIError(RaywardenError):
    """A certificate or key could not be created, loaded or verified."""


class ClusterError(RaywardenError):
    """Ray or the gateway could not be started, stopped or reached."""


class PolicyError(RaywardenError):
    """A policy set failed to parse, validate or evaluate."""


class AuthenticationError(RaywardenError):
    """A credential was missing, malformed, expired, revoked or from a foreign trust root.

    ``reason`` is precise and goes to the audit log. Clients see a generic message, and ``public`` when it is
    set: what the credential's holder may be told (that it expired, say), never why a forgery failed.
    """

    def __init__(self, reason: str, *, public: str | None = None) -> None:
        super().__init__("authentication failed", hint=None)
        self.reason = reason
        self.public = public


class GatewayRequestError(RaywardenError):
    """The gateway answered a client request with an error (raised by the CLI's client)."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class UsageError(RaywardenError):
    """A command was given input it cannot use."""

    exit_code = 2
