"""Playwright driving Debian's chromium against a real gateway: launch, CA trust, sign-in, screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)"
    if shutil.which("certutil") is None:
        return "certutil is missing (apt-get install libnss3-tools; .ci/run does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def nss_home(root: Path, ca_path: str) -> Path:
    """A HOME whose NSS database trusts the cluster's access CA: Chromium then verifies the gateway for real
    (no ignore_https_errors, so a wrong certificate would fail the test)."""
    home = root / "chromium-home"
    shutil.rmtree(home, ignore_errors=True)  # certutil -N prompts (and waits) on an existing database
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["certutil", "-d", f"sql:{db}", "-N", "--empty-password"],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    subprocess.run(
        ["certutil", "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "raywarden-test-ca", "-i", ca_path],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    return home


@contextmanager
def chromium(home: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=ARGS, env={**os.environ, "HOME": str(home)}
        )
        try:
            yield browser
        finally:
            browser.close()


def signin_path(url: str, ca: str, cert: tuple[str, str]) -> str:
    """What `raywarden ui` does: ask the gateway for a one-time link with the client certificate."""
    resp = requests.post(f"{url}/raywarden/v1/signin-link", json={}, cert=cert, verify=ca, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["path"])


def sign_in(page: Any, url: str, path: str) -> None:
    page.goto(url + path)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/ui/")


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    return target
