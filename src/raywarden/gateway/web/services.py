"""What the console's pages share: the services they use, what a page gets and what it answers."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import HTMLResponse, Response

from raywarden.config import ClusterConfig
from raywarden.gateway.authn import Identity
from raywarden.gateway.authz import Viewer
from raywarden.gateway.metrics.prometheus import Prometheus
from raywarden.gateway.metrics.views import MetricsViews
from raywarden.gateway.oidc import OidcFederation, oidc_config_path
from raywarden.gateway.request import Target
from raywarden.identity.sessions import SessionStore
from raywarden.identity.store import IdentityStore
from raywarden.state import StateDir

NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True)
class WebServices:
    """What the console uses: the cluster config and state dir, the identity and session stores."""

    state: StateDir
    config: ClusterConfig
    store: IdentityStore
    sessions: SessionStore
    oidc: OidcFederation | None = None
    # Ray's Metrics page, when the cluster runs a Prometheus (`raywarden up` starts one if it is installed).
    metrics: MetricsViews | None = None

    @classmethod
    def for_gateway(
        cls, state: StateDir, config: ClusterConfig, store: IdentityStore, prometheus_url: str | None = None
    ) -> WebServices:
        metrics = MetricsViews(Prometheus(prometheus_url), lambda: ray_session_name(state)) if prometheus_url else None
        return cls(
            state,
            config,
            store,
            SessionStore(state.identity_db, store),
            OidcFederation(oidc_config_path(state)),
            metrics,
        )


_SESSION_NAME = re.compile(r"session_[0-9_-]{1,64}")


def ray_session_name(state: StateDir) -> str:
    """The running Ray session's name (Ray labels every metric with it), from Ray's session_latest link.

    The link is in a folder jobs can write, so only a name of Ray's own form is believed."""
    try:
        name = os.path.basename(os.readlink(state.ray_temp_dir / "session_latest"))
    except OSError:
        return ""
    return name if _SESSION_NAME.fullmatch(name) else ""


@dataclass(frozen=True)
class PageRequest:
    """What a page handler gets: the parsed request and, on identity routes, who asks."""

    page: str
    target: Target
    params: dict[str, str]
    source: str
    host: str = ""
    cookie: str | None = None  # the session cookie
    binding: str | None = None  # the OIDC flow's binding cookie
    form: dict[str, str] = field(default_factory=dict)
    identity: Identity | None = None
    viewer: Viewer | None = None


@dataclass
class PageResult:
    response: Response
    status: int
    # Extra fields for the request's audit record (session refs, reasons; never secrets).
    audit: dict[str, Any] = field(default_factory=dict)
    deny: bool = False


PageHandler = Callable[[PageRequest], Awaitable[PageResult]]


def html(body: str, status: int = 200, **headers: str) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**NO_STORE, **headers})
