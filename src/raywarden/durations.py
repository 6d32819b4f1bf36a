"""Durations as people type them (``30d``, ``12h``, ``1d12h``) and as config.json keeps them."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
# ASCII digits only: \d would also take other scripts' digits, which int() then reads.
_DURATION_RE = re.compile(r"(?:([0-9]{1,9})([wdhms]))+")
_DURATION_PART = re.compile(r"([0-9]{1,9})([wdhms])")
MAX_DURATION_S = 100 * 366 * 86400
DURATION_HINT = "a number and a unit, combined as needed: 90s, 2m, 12h, 30d, 1w, 1d12h"


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``2m``, ``90s``, ``1w`` or a combination (``1d12h``). A bare number is refused: it
    would be a guess between seconds, hours and days."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or not _DURATION_RE.fullmatch(compact):
        raise ValueError(f"{text!r} is not a duration ({DURATION_HINT})")
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(compact))
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text!r} is longer than any lifetime raywarden takes (100 years)")
    return dt.timedelta(seconds=seconds)


def format_duration(value: dt.timedelta) -> str:
    """The shortest text ``parse_duration`` reads back as ``value`` (whole seconds): ``30d``, ``1d12h``, ``2m``."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _DURATION_UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _duration(value: object) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"a duration is text ({DURATION_HINT})")


def within(low: str, high: str) -> AfterValidator:
    lo, hi = parse_duration(low), parse_duration(high)

    def check(value: dt.timedelta) -> dt.timedelta:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {low} and {high}, not {format_duration(value)}")
        return value

    return AfterValidator(check)


# A duration in config.json is text such as "30d" (what `init --node-cert-ttl` takes), read back the same way.
Duration = Annotated[
    dt.timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str, when_used="json")
]
