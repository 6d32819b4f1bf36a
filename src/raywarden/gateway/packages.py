"""Package uploads never replace a package Ray already holds.

Ray names an uploaded working_dir or py_modules package after its content, and a client that finds the
name already stored skips the upload and uses what is there. Ray itself overwrites on every PUT, and its
directory hash is 64 bits of XORed SHA-1 digests, which anyone can match with crafted files. Without this
guard one user could replace another user's code under its name, or answer a later upload with their own.
Refusing to overwrite closes the first; docs/threat-model.md describes what remains of the second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from raywarden.gateway.locks import KeyedLocks
from raywarden.gateway.responses import Refusal
from raywarden.gateway.upstream import Upstream


class PackageUploads:
    """One upload per package name at a time, and none over a stored package."""

    def __init__(self, upstream: Upstream, locks_dir: Path | None = None) -> None:
        self._upstream = upstream
        # Shared by the gateway's workers: two uploads of one name never both pass the check.
        self._locks = KeyedLocks(locks_dir, "package")

    @asynccontextmanager
    async def exclusive(self, path: str) -> AsyncIterator[None]:
        """Hold the package's name while it is checked and uploaded, so two uploads cannot both pass."""
        async with self._locks.holding(path):
            yield

    async def overwrite_refusal(self, path: str) -> Refusal | None:
        """409 when Ray already stores a package at ``path`` (Ray's own existence check: GET answers 200)."""
        found = await self._upstream.request("GET", path, "", {}, None)
        if found.status != 200:
            return None
        return Refusal(
            409,
            "this package is already stored; packages cannot be replaced",
            reason="upload over an existing package refused (packages are immutable)",
            hint="Ray's clients check before uploading and reuse a stored package; to upload "
            "different code, change any file in the working_dir or module",
        )
