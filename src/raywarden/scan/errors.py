"""The scanner's one error type: bad input or a scan that could not run."""

from __future__ import annotations

from raywarden.errors import RaywardenError


class ScanError(RaywardenError):
    """A target, port list or option is invalid, or nothing could be scanned.

    Exit code 2 keeps "the scan itself failed" apart from "the scan found problems" (1).
    """

    exit_code = 2
