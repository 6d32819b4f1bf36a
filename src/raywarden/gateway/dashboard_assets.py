"""The Ray dashboard's own page and assets (index.html, favicon, static JS/CSS/media), served by the gateway
from the Ray package installed next to it, never relayed from Ray's dashboard.

Ray's dashboard listens on loopback and anyone with Ray's privileges (in the threat model: any job) can stop it
and listen on its port in its place. Whatever answers there, no script it sends runs in the gateway's origin:
the single-page app comes from the installed package, and only the API answers (data, decided and filtered as
always) come from Ray. docs/threat-model.md says what a fake can still do.
"""

from __future__ import annotations

import importlib.util
import mimetypes
from functools import cache
from pathlib import Path

from starlette.responses import Response

from raywarden.gateway import responses
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.route_model import Routed

# The dashboard's templates that name a file of its build (ray/dashboard/http_server_head.py serves the same).
_FILES = {"/": "index.html", "/favicon.ico": "favicon.ico"}
_STATIC = "/static/{static_path}"
_MAX_ASSET_BYTES = 64 * 1024 * 1024


@cache
def build_dir() -> Path | None:
    """``ray/dashboard/client/build`` of the installed Ray, found without importing Ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "dashboard" / "client" / "build"


def asset_path(found: Routed) -> Path | None:
    """The build's file this dashboard route names, or None when the route is no asset of the build."""
    template = found.route.ray_template
    build = build_dir()
    if build is None or found.route.method not in ("GET", "HEAD"):
        return None
    if template in _FILES:
        return build / _FILES[template]
    if template == _STATIC:
        return build / "static" / found.params["static_path"]  # its pattern admits no "..", no "/" at the start
    return None


async def serve(ex: Exchange, found: Routed, method: str) -> Response | None:
    """The asset, from the installed package (404 when it has no such file); None for any other route."""
    path = asset_path(found)
    if path is None:
        return None
    try:
        data = path.read_bytes() if path.is_file() and path.stat().st_size <= _MAX_ASSET_BYTES else None
    except OSError:
        data = None
    headers = {responses.GATEWAY_HEADER[0]: responses.GATEWAY_HEADER[1]}
    if data is None:
        await ex.finish(404)
        return Response(b"404: Not Found", status_code=404, headers=headers, media_type="text/plain")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.name == "index.html":
        headers["cache-control"] = "no-store"  # as Ray sends it: a new build must load its new assets
    await ex.finish(200, bytes_sent=len(data))
    return Response(b"" if method == "HEAD" else data, status_code=200, headers=headers, media_type=kind)
