"""The gateway's client for the cluster's Prometheus (on loopback, started by `raywarden up`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from raywarden.errors import RaywardenError
from raywarden.gateway.metrics.query import TimeRange


class PrometheusUnavailable(RaywardenError):
    """Prometheus did not answer, or answered something that is not a query result."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]  # (epoch seconds, value), NaN and Inf left out


class Prometheus:
    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query_range(self, expr: str, window: TimeRange) -> list[Series]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        params = {"query": expr, "start": f"{window.start:.3f}", "end": f"{window.end:.3f}", "step": str(window.step)}
        try:
            async with self._session.get(f"{self.base_url}/api/v1/query_range", params=params) as resp:
                body: Any = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.base_url} did not answer: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise PrometheusUnavailable(f"Prometheus refused the query: {str(error)[:200]}")
        return [_series(item) for item in body.get("data", {}).get("result", []) if isinstance(item, dict)]


def _series(item: dict[str, Any]) -> Series:
    points = []
    for stamp, value in item.get("values", []):
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if number == number and abs(number) != float("inf"):
            points.append((float(stamp), number))
    labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
    return Series(labels, tuple(points))
