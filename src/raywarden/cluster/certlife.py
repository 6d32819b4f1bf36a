"""When a certificate the cluster holds is due for renewal: once 2/3 of its life has passed.

Life is counted from issuance, not from ``notBefore``: leaves are backdated a few minutes for clock skew
(pki/ca_keys.py), which would otherwise put a 2-minute certificate past its renewal point at birth.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from raywarden.pki.ca_keys import BACKDATE

RENEW_AT = 2 / 3


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Lifetime:
    issued: dt.datetime
    not_after: dt.datetime

    @classmethod
    def of(cls, cert: x509.Certificate) -> Lifetime:
        not_after = cert.not_valid_after_utc
        return cls(min(cert.not_valid_before_utc + BACKDATE, not_after), not_after)

    @property
    def total(self) -> dt.timedelta:
        return self.not_after - self.issued

    def renew_at(self, fraction: float = RENEW_AT) -> dt.datetime:
        return self.issued + self.total * fraction

    def due(self, now: dt.datetime | None = None) -> bool:
        return (now or now_utc()) >= self.renew_at()

    def left(self, now: dt.datetime | None = None) -> dt.timedelta:
        return self.not_after - (now or now_utc())

    def used(self, now: dt.datetime | None = None) -> float:
        """The fraction of its life that has passed (above 1 once expired)."""
        total = self.total.total_seconds()
        return ((now or now_utc()) - self.issued).total_seconds() / total if total > 0 else 1.0

    def overdue(self, now: dt.datetime | None = None) -> bool:
        """Past its renewal point by more than a twelfth of its life: renewal should have happened by now
        (it is attempted at once, then retried), so something keeps it from succeeding."""
        return self.used(now) >= RENEW_AT + 1 / 12


def describe_left(delta: dt.timedelta) -> str:
    """``3.2 days``, ``5.0 hours``, ``42 s``: how long until (or, negative, since) a moment."""
    seconds = delta.total_seconds()
    if abs(seconds) >= 86400:
        return f"{seconds / 86400:.1f} days"
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if abs(seconds) >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
