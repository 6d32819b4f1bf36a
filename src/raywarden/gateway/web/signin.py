"""The console's anonymous pages: sign-in with a one-time link or through an OIDC issuer, sign-out, and the
console's static answers. Each checks its own credential (the code, the flow's state and binding cookie, the
session's CSRF token); its answer is the decision the app records (docs/browser.md)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.responses import JSONResponse, RedirectResponse, Response

from raywarden.errors import AuthenticationError, ConfigError
from raywarden.gateway.cookies import clear_session_cookie, set_session_cookie
from raywarden.gateway.oidc import OidcIssuer, load_oidc_config, oidc_config_path
from raywarden.gateway.oidc_people import AdmissionRefused, admit
from raywarden.gateway.web import oidc_flow, pages
from raywarden.gateway.web.assets import CONSOLE_CSS
from raywarden.gateway.web.services import NO_STORE, PageHandler, PageRequest, PageResult, WebServices, html
from raywarden.identity.sessions import NewSession, SessionRefused, csrf_matches

SIGNIN_WINDOW_S = 300.0
MAX_SIGNIN_FAILURES = 10  # failed sign-ins from one source address per window


class SignIn:
    def __init__(self, services: WebServices) -> None:
        self.web = services
        self.sessions = services.sessions

    def handlers(self) -> dict[str, PageHandler]:
        return {
            "home": self.home,
            "dashboard_home": self.home,
            "auth_mode": self.auth_mode,
            "stylesheet": self.stylesheet,
            "favicon": self.favicon,
            "signin_form": self.signin_form,
            "signin": self.signin,
            "signout": self.signout,
            "oidc_start": self.oidc_start,
            "oidc_callback": self.oidc_callback,
        }

    async def home(self, request: PageRequest) -> PageResult:
        target = "/dashboard/" if request.page == "dashboard_home" else "/ui/"
        return PageResult(RedirectResponse(target, status_code=308), 308)

    async def auth_mode(self, _: PageRequest) -> PageResult:
        # Ray's UI pops its own token dialog on any 401/403 unless told authentication is off; the gateway
        # owns authentication, so Ray's prompt is never shown.
        return PageResult(JSONResponse({"authentication_mode": "disabled"}, headers=NO_STORE), 200)

    async def stylesheet(self, _: PageRequest) -> PageResult:
        return PageResult(Response(CONSOLE_CSS, media_type="text/css", headers={"cache-control": "max-age=3600"}), 200)

    async def favicon(self, _: PageRequest) -> PageResult:
        return PageResult(Response(status_code=204, headers={"cache-control": "max-age=86400"}), 204)

    async def signin_form(self, request: PageRequest) -> PageResult:
        return PageResult(html(pages.signin_page(request.target.get("code"), self._issuers())), 200)

    # -- one-time links -------------------------------------------------------------------------------------

    async def signin(self, request: PageRequest) -> PageResult:
        now, source = time.time(), request.source
        if self.web.store.failures_since(f"signin-source:{source}", now - SIGNIN_WINDOW_S) >= MAX_SIGNIN_FAILURES:
            return self._refused(429, f"too many failed sign-ins from {source}", source, now, count=False)
        code = request.form.get("code")
        if not code:
            return self._refused(400, "sign-in form without a code", source, now)
        try:
            code_id, spiffe_id, via_method, via_id = self.sessions.redeem_link(code, now)
        except SessionRefused as exc:
            return self._refused(401, exc.reason, source, now)
        try:
            new = self._create(spiffe_id, via_method, via_id, source, now)
        except SessionRefused as exc:
            return self._refused(403, f"sign-in code {code_id}: {exc.reason}", source, now, code_id=code_id)
        fields = {"code_id": code_id, "session_principal": spiffe_id, "via": via_method}
        return self._started(new, request.cookie, now, fields)

    def _create(
        self, spiffe_id: str, via_method: str, via_id: str, source: str, now: float, groups: tuple[str, ...] = ()
    ) -> NewSession:
        config = self.web.config
        return self.sessions.create(
            spiffe_id,
            via_method,
            via_id,
            source=source,
            idle_s=config.session_idle_minutes * 60,
            max_s=config.session_max_hours * 3600,
            extra_groups=groups,
            now=now,
        )

    def _started(self, new: NewSession, cookie: str | None, now: float, fields: dict[str, Any]) -> PageResult:
        """Every sign-in ends here: the browser's previous session ends (session ids are rotated at sign-in),
        the new cookie is set, and the browser goes to the console."""
        fields = {"event": "session.start", "session_ref": new.info.ref, **fields}
        if cookie:
            ended = self.sessions.end(cookie, "replaced at sign-in", now)
            if ended:
                fields["replaced_session_ref"] = ended
        response = RedirectResponse("/ui/", status_code=303, headers=NO_STORE)
        response.headers.append(
            "set-cookie", set_session_cookie(new.session_id.reveal(), int(new.info.expires_at - now))
        )
        return PageResult(response, 303, fields)

    def _refused(
        self, status: int, reason: str, source: str, now: float, *, count: bool = True, **fields: Any
    ) -> PageResult:
        if count:
            self.web.store.record_failure(f"signin-source:{source}", now)
        text = (
            "Too many failed sign-ins from this address; wait a few minutes."
            if status == 429
            else "This sign-in link is invalid, expired or already used. Run `raywarden ui` for a new one."
        )
        body = pages.signin_page(None, self._issuers(), text)
        return PageResult(html(body, status), status, {"event": "session.refused", "reason": reason, **fields}, True)

    async def signout(self, request: PageRequest) -> PageResult:
        response = RedirectResponse("/ui/signin", status_code=303, headers=NO_STORE)
        response.headers.append("set-cookie", clear_session_cookie())
        cookie = request.cookie
        if not cookie:
            return PageResult(response, 303, {"event": "session.end", "reason": "no session cookie"})
        if not csrf_matches(cookie, request.form.get("csrf", "")):
            page = pages.message_page(
                "Sign-out refused", "The sign-out form was not this session's own.", link=("/ui/", "Back")
            )
            return PageResult(html(page, 403), 403, {"reason": "sign-out without this session's CSRF token"}, True)
        ended = self.sessions.end(cookie, "signed out")
        return PageResult(response, 303, {"event": "session.end", "session_ref": ended})

    # -- OIDC -----------------------------------------------------------------------------------------------

    def _configured_issuers(self) -> list[OidcIssuer]:
        path = oidc_config_path(self.web.state)
        if self.web.oidc is None or not path.is_file():
            return []
        try:
            return list(load_oidc_config(path).issuers)
        except ConfigError:
            return []

    def _issuers(self) -> list[tuple[int, str]]:
        return [(index, issuer.issuer) for index, issuer in enumerate(self._configured_issuers())]

    def _oidc_refused(self, status: int, reason: str, text: str) -> PageResult:
        response = html(pages.signin_page(None, self._issuers(), text), status)
        response.headers.append("set-cookie", oidc_flow.clear_binding_cookie())
        return PageResult(response, status, {"event": "session.refused", "reason": reason}, True)

    async def oidc_start(self, request: PageRequest) -> PageResult:
        index = request.target.get("issuer") or ""
        issuers = self._configured_issuers()
        if not index.isdigit() or int(index) >= len(issuers):
            return self._oidc_refused(404, f"no OIDC issuer number {index[:10]!r}", "No such sign-on provider.")
        issuer = issuers[int(index)]
        try:
            endpoints = await asyncio.to_thread(oidc_flow.discover, issuer)
        except oidc_flow.OidcFlowError as exc:
            return self._oidc_refused(502, exc.reason, "The sign-on provider cannot be reached.")
        # The Host header passed the allowlist (middleware/host.py), so the redirect URI is one of ours.
        flow = self.sessions.begin_oidc(issuer.issuer, f"https://{request.host}/ui/oidc/callback")
        response = RedirectResponse(
            oidc_flow.authorization_url(issuer, endpoints, flow), status_code=303, headers=NO_STORE
        )
        response.headers.append("set-cookie", oidc_flow.binding_cookie(flow.binding))
        return PageResult(response, 303, {"event": "oidc.start", "oidc_issuer": issuer.issuer})

    async def oidc_callback(self, request: PageRequest) -> PageResult:
        failed = "Single sign-on did not complete. Try again."
        query = request.target
        if query.get("error"):
            return self._oidc_refused(401, f"issuer returned error {(query.get('error') or '')[:60]!r}", failed)
        try:
            flow = self.sessions.finish_oidc(query.get("state") or "", request.binding)
        except SessionRefused as exc:
            return self._oidc_refused(401, exc.reason, failed)
        issuer = next((i for i in self._configured_issuers() if i.issuer == flow.issuer), None)
        code = query.get("code")
        if issuer is None or not code or self.web.oidc is None:
            return self._oidc_refused(401, "OIDC callback without a code or for an unconfigured issuer", failed)
        try:
            found = await oidc_flow.redeem(self.web.oidc, issuer, flow, code)
        except oidc_flow.OidcFlowError as exc:
            return self._oidc_refused(401, exc.reason, failed)
        config = self.web.config
        single = None if config.admits_principals else self.web.state
        try:
            person = admit(found, config.trust_domain, self.web.store, single)
        except AdmissionRefused as exc:
            return self._oidc_refused(403, exc.reason, f"Not admitted: {exc.public}.")
        except AuthenticationError as exc:
            return self._oidc_refused(403, exc.reason, failed)
        now = time.time()
        new = self._create(person.spiffe_id, "oidc", found.credential_id, request.source, now, found.groups)
        fields = {
            "session_principal": person.spiffe_id,
            "via": "oidc",
            "oidc_issuer": issuer.issuer,
            "oidc_ref": found.credential_id,
        }
        result = self._started(new, request.cookie, now, fields)
        result.response.headers.append("set-cookie", oidc_flow.clear_binding_cookie())
        return result
