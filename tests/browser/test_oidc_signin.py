"""Browser sign-in through an OIDC issuer (authorization code + PKCE S256, state, nonce), against a real local
identity provider (tests/oidc_support.py), with Chromium following every redirect."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from raywarden.gateway.oidc import default_namespace
from tests.browser.browser_support import chromium, missing_browser, nss_home, shot
from tests.oidc_support import Idp, running_idp
from tests.support import Cluster

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")]


@pytest.fixture
def idp(cluster: Cluster) -> Iterator[Idp]:
    import json

    path = cluster.state.root / "oidc.json"
    before = path.read_bytes() if path.exists() else None
    with running_idp() as provider:
        provider.add_key("k1")
        provider.login_claims = {"preferred_username": f"oidc-olga-{secrets.token_hex(3)}", "groups": ["eng"]}
        path.write_text(json.dumps(provider.config(min_refresh_s=0)))
        try:
            yield provider
        finally:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(before)


def test_oidc_sign_in_with_pkce(cluster: Cluster, idp: Idp) -> None:
    start = len(cluster.audit_records())
    name = idp.login_claims["preferred_username"]
    with chromium(nss_home(cluster.root, cluster.ca)) as browser:
        page: Any = browser.new_context().new_page()
        page.goto(f"{cluster.url}/ui/signin")
        page.get_by_role("link", name=f"Sign in with {idp.issuer}").click()
        page.wait_for_url(f"{cluster.url}/ui/")
        # OIDC people are namespaced per issuer (gateway/oidc.py), apart from local users of the same name.
        namespace = default_namespace(idp.issuer)
        expect(page.locator("main")).to_contain_text(f"spiffe://test.raywarden/oidc/{namespace}/{name}")
        expect(page.locator("main")).to_contain_text("developers")  # group_map: eng -> developers
        shot(page, "console-whoami-oidc")
        page.goto(f"{cluster.url}/dashboard/")
        status = page.evaluate("async () => (await fetch('api/jobs/')).status")
        assert status == 200
    exchange = idp.token_requests[-1]
    assert exchange["code_verifier"] and "client_secret" not in exchange
    records = cluster.audit_records()[start:]
    started = [r for r in records if r.get("event") == "session.start"]
    assert started and started[-1]["via"] == "oidc" and started[-1]["session_principal"].endswith(name)
    assert any(
        r.get("auth_method") == "session"
        and r.get("path") == "/dashboard/api/jobs/"
        and r.get("principal", "").endswith(name)
        for r in records
    )


def test_a_callback_from_another_browser_or_a_replay_signs_nobody_in(cluster: Cluster, idp: Idp) -> None:
    start = len(cluster.audit_records())
    begin = requests.get(f"{cluster.url}/ui/oidc/start?issuer=0", verify=cluster.ca, allow_redirects=False, timeout=30)
    assert begin.status_code == 303
    binding = begin.cookies.get("__Host-raywarden-oidc")
    assert binding and "SameSite=Lax" in begin.headers["set-cookie"]
    callback = requests.get(begin.headers["location"], allow_redirects=False, timeout=30).headers["location"]
    assert callback.startswith(f"{cluster.url}/ui/oidc/callback?")
    # Login CSRF: the attacker's callback URL, opened by a victim whose browser did not start the flow.
    victim = requests.get(callback, verify=cluster.ca, allow_redirects=False, timeout=30)
    assert victim.status_code == 401 and "__Host-raywarden-session" not in victim.headers.get("set-cookie", "")
    cookies = {"__Host-raywarden-oidc": binding}
    own = requests.get(callback, verify=cluster.ca, cookies=cookies, allow_redirects=False, timeout=30)
    assert own.status_code == 303 and "__Host-raywarden-session=" in own.headers["set-cookie"]
    replay = requests.get(callback, verify=cluster.ca, cookies=cookies, allow_redirects=False, timeout=30)
    assert replay.status_code == 401
    reasons = [r.get("reason", "") for r in cluster.audit_records()[start:] if r.get("event") == "session.refused"]
    assert any("did not start the flow" in r for r in reasons) and any("already used" in r for r in reasons)
