"""The console's HTML, rendered from Jinja2 templates (gateway/web/templates) with autoescape on: every value
is escaped unless it is ``Markup`` built by the gateway itself (the metrics charts). No script, one
same-origin stylesheet."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

_ENV = Environment(
    loader=PackageLoader("raywarden.gateway.web", "templates"),
    autoescape=select_autoescape(["html"], default=True),
    undefined=StrictUndefined,
    finalize=lambda value: "" if value is None else value,
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


_ENV.filters["when"] = when


@dataclass(frozen=True)
class Navigation:
    name: str
    csrf: str | None
    links: tuple[tuple[str, str], ...]


def navigation(name: str, csrf: str | None, *, admin: bool) -> Navigation:
    links = [("/ui/", "Who am I"), ("/ui/jobs", "My jobs"), ("/dashboard/", "Ray dashboard")]
    if admin:
        links += [("/ui/admin/principals", "Users and service accounts"), ("/ui/admin/audit", "Audit log")]
    return Navigation(name, csrf, tuple(links))


def render(template: str, title: str, nav: Navigation | None = None, **context: Any) -> str:
    return _ENV.get_template(template).render(title=title, nav=nav, **context)


def signin_page(code: str | None, issuers: list[tuple[int, str]], message: str | None = None) -> str:
    return render("signin.html", "Sign in", code=code, issuers=issuers, message=message)


def message_page(title: str, text: str, *, link: tuple[str, str] | None = None) -> str:
    return render("message.html", title, text=text, link=link)


def embedded(title: str, body: Markup, refresh_s: int | None, *, whole: bool) -> str:
    """A metrics panel for the dashboard's iframes (``whole``: a full dashboard, opened in its own tab)."""
    return render("embedded.html", title, body=body, refresh_s=int(refresh_s) if refresh_s else None, whole=whole)
