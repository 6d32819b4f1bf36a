"""The Serve listener's path rule (gateway/serve/target.py) and Serve's own matching (serve/table.py)."""

from __future__ import annotations

import pytest

from raywarden.gateway.responses import Refusal
from raywarden.gateway.serve.table import match_route
from raywarden.gateway.serve.target import serve_target

pytestmark = pytest.mark.unit
ROUTES = (("/a/b", "ab"), ("/echo", "echo"), ("/a", "a"))


@pytest.mark.parametrize(
    ("raw", "decoded", "encoded"),
    [
        (b"/echo", "/echo", "/echo"),
        (b"/%65cho/x", "/echo/x", "/echo/x"),
        (b"/echo/caf%C3%A9", "/echo/caf\u00e9", "/echo/caf%C3%A9"),
        (b"/echo/a%20b", "/echo/a b", "/echo/a%20b"),
        (b"/echo/", "/echo/", "/echo/"),
    ],
)
def test_the_path_is_decoded_once_and_forwarded_as_matched(raw: bytes, decoded: str, encoded: str) -> None:
    target = serve_target(raw, b"")
    assert target.path == decoded and target.encoded_path == encoded


@pytest.mark.parametrize(
    "raw",
    [
        b"/a%2Fb",
        b"/a%2fb",
        b"/a/../echo",
        b"/a/%2e%2e/echo",
        b"/./echo",
        b"//a",
        b"/a%5Cb",
        b"/a%00",
        b"/a%25",
        b"/a%zz",
        b"/a b",
        b"/caf\xc3\xa9",
        b"/a\\b",
        b"echo",
        b"/" + b"x" * 3000,
    ],
)
def test_paths_with_two_readings_are_refused(raw: bytes) -> None:
    with pytest.raises(Refusal) as caught:
        serve_target(raw, b"")
    assert caught.value.status == 400


@pytest.mark.parametrize("query", [b"a=1#frag", b"a=1 2", b"a=%zz", b"a=\x01", b"a=" + b"x" * 20000])
def test_bad_queries_are_refused(query: bytes) -> None:
    with pytest.raises(Refusal):
        serve_target(b"/echo", query)


@pytest.mark.parametrize(
    ("path", "app"),
    [("/echo", "echo"), ("/echo/", "echo"), ("/echo/x", "echo"), ("/a/bc", "a"), ("/a/b/c", "ab"), ("/echox", None)],
)
def test_matching_follows_serve(path: str, app: str | None) -> None:
    found = match_route(ROUTES, path)
    assert (found[1] if found else None) == app
