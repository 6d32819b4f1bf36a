"""Server-rendered HTML for the console: escaped text only, no script, one same-origin stylesheet."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from html import escape

CSS_PATH = "/ui/static/console.css"


def e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def page(title: str, body: str, *, nav: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · raywarden</title>"
        f'<link rel="stylesheet" href="{CSS_PATH}"></head><body>'
        '<a class="skip" href="#main">Skip to content</a>'
        f"<header>{nav}</header>"
        f'<main id="main" tabindex="-1"><h1>{e(title)}</h1>{body}</main></body></html>\n'
    )


def navigation(name: str, csrf: str | None, *, admin: bool) -> str:
    links = [("/ui/", "Who am I"), ("/ui/jobs", "My jobs"), ("/dashboard/", "Ray dashboard")]
    if admin:
        links += [("/ui/admin/principals", "Users and service accounts"), ("/ui/admin/audit", "Audit log")]
    items = "".join(f'<li><a href="{href}">{e(text)}</a></li>' for href, text in links)
    signout = ""
    if csrf is not None:
        signout = (
            '<form method="post" action="/ui/signout">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<span class="muted">{e(name)}</span> <button type="submit">Sign out</button></form>'
        )
    return f'<nav aria-label="Main"><span class="brand">raywarden</span><ul>{items}</ul>{signout}</nav>'


def table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str) -> str:
    """``rows`` hold HTML already escaped by the caller (cells may carry links)."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f"<p>{e(empty)}</p>"
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    return f"<table><caption>{e(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def definition_list(items: Iterable[tuple[str, str]]) -> str:
    """Values are HTML already escaped by the caller."""
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def signin_page(code: str | None, issuers: Sequence[tuple[int, str]], message: str | None = None) -> str:
    parts = []
    if message:
        parts.append(f'<p class="error" role="alert">{e(message)}</p>')
    if code:
        parts.append(
            '<form method="post" action="/ui/signin">'
            f'<input type="hidden" name="code" value="{e(code)}">'
            "<p>This one-time link signs this browser in. It works once and for a few minutes only.</p>"
            '<button class="primary" type="submit">Sign in</button></form>'
        )
    else:
        parts.append(
            "<p>Run <code>raywarden ui</code> on a machine where your raywarden profile lives: it prints a "
            "one-time sign-in link for your identity. Open it in this browser.</p>"
        )
    if issuers:
        links = "".join(
            f'<li><a href="/ui/oidc/start?issuer={index}">Sign in with {e(name)}</a></li>' for index, name in issuers
        )
        parts.append(f"<h2>Single sign-on</h2><ul>{links}</ul>")
    return page("Sign in", "".join(parts))


def message_page(title: str, text: str, *, nav: str = "", link: tuple[str, str] | None = None) -> str:
    extra = f'<p><a href="{e(link[0])}">{e(link[1])}</a></p>' if link else ""
    return page(title, f'<p role="status">{e(text)}</p>{extra}', nav=nav)


def embedded(title: str, body: str, refresh_s: int | None, *, whole: bool) -> str:
    """A metrics panel for the dashboard's iframes (``whole``: a full dashboard, opened in its own tab)."""
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    heading = f"<h1>{e(title)}</h1>" if whole else f'<h1 class="panel-title">{e(title)}</h1>'
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
        f"<title>{e(title)} · raywarden</title>"
        f'<link rel="stylesheet" href="{CSS_PATH}"></head><body class="{"metrics" if whole else "embedded"}">'
        f'<main id="main">{heading}{body}</main></body></html>\n'
    )
