"""`raywarden doctor`: the local deployment's security posture, one check at a time, each with a fix."""

from __future__ import annotations

from raywarden.doctor.report import Check, DoctorReport, DoctorUnavailable, Status
from raywarden.doctor.runner import run_doctor

__all__ = ["Check", "DoctorReport", "DoctorUnavailable", "Status", "run_doctor"]
