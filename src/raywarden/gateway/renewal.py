"""Renew the gateway's certificate once 2/3 of its life has passed, while the gateway serves.

The gateway's supervisor runs the one renewer thread (gateway/supervisor.py); each worker process swaps the
new certificate in on its own at its next handshake (gateway/tls.py). The check and the issuance happen
under the state dir's renewal lock, which `up` and `cert rotate --gateway` take too, so a certificate that
came due is renewed once whoever looks first. The new certificate is signed with the access CA's current key
and certificate files, so after a CA rotation it comes from the new CA.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from raywarden.audit import AuditLog
from raywarden.cluster.certlife import Lifetime, now_utc
from raywarden.cluster.setup import renew_gateway_certificate_if_due
from raywarden.errors import RaywardenError
from raywarden.files import write_private
from raywarden.pki.certs import load_cert, serial_hex
from raywarden.state import StateDir

log = logging.getLogger("raywarden.gateway")

# Never wait longer than this between two looks, whatever the certificate says (a renewal by hand, a clock
# jump); never retry a failure sooner than MIN_WAIT_S.
MAX_WAIT_S = 30.0
MIN_WAIT_S = 1.0
RETRY_WAIT_S = 10.0


@dataclass(frozen=True)
class Renewed:
    old_serial: str
    serial: str
    not_after: dt.datetime


def renew_if_due(state: StateDir, now: dt.datetime | None = None) -> Renewed | None:
    """Issue a new gateway certificate if the current one is past its renewal point (checked under the lock,
    so that concurrent callers renew once). Returns what was done, or None."""
    done = renew_gateway_certificate_if_due(state, now)
    if done is None:
        return None
    old_serial, new = done
    return Renewed(old_serial, serial_hex(new), new.not_valid_after_utc)


def next_look(state: StateDir, now: dt.datetime | None = None) -> float:
    """Seconds until the current certificate is due, bounded to [MIN_WAIT_S, MAX_WAIT_S]."""
    try:
        due = Lifetime.of(load_cert(state.gateway_cert)).renew_at()
    except RaywardenError:
        return RETRY_WAIT_S
    wait = (due - (now or now_utc())).total_seconds()
    return min(MAX_WAIT_S, max(MIN_WAIT_S, wait))


class GatewayRenewer:
    """The renewal loop; ``stop`` ends it (tests, shutdown)."""

    def __init__(self, state: StateDir, audit: AuditLog) -> None:
        self.state = state
        self.audit = audit
        self.failures = 0
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        while not self._stop.wait(next_look(self.state) if self.failures == 0 else RETRY_WAIT_S):
            self.attempt()

    def stop(self, timeout: float | None = None) -> None:
        """End the loop, waiting up to ``timeout`` for an attempt under way (it writes and audits)."""
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def attempt(self) -> Renewed | None:
        try:
            renewed = renew_if_due(self.state)
        except (RaywardenError, OSError, ValueError) as exc:
            self.failures += 1
            reason = exc.message if isinstance(exc, RaywardenError) else f"{type(exc).__name__}: {exc}"
            log.error("gateway certificate renewal failed (%d in a row): %s", self.failures, reason)
            self._record({"accepted": False, "reason": reason, "failures": self.failures})
            return None
        if renewed is None:
            return None
        self.failures = 0
        log.info("gateway certificate renewed: %s replaces %s", renewed.serial, renewed.old_serial)
        self._record(
            {
                "accepted": True,
                "old_serial": renewed.old_serial,
                "serial": renewed.serial,
                "not_after": renewed.not_after.isoformat(),
                "failures": 0,
            }
        )
        return renewed

    def _record(self, fields: dict[str, Any]) -> None:
        fields = {**fields, "pid": os.getpid(), "at": now_utc().isoformat()}
        try:
            write_private(self.state.gateway_renewal_status, (json.dumps(fields, indent=2) + "\n").encode())
        except OSError as exc:
            log.error("cannot record the renewal status: %s", exc)
        try:
            self.audit.append({"kind": "tls", "event": "gateway.cert.renew", **fields})
        except RaywardenError as exc:
            log.error("cannot audit the gateway certificate renewal: %s", exc.message)


def start_gateway_renewal(state: StateDir, audit: AuditLog) -> GatewayRenewer:
    """Start the renewer thread (a daemon: it holds nothing that a kill could leave half-done, since every
    file it writes is renamed into place; ``stop`` lets an attempt under way finish and audit)."""
    renewer = GatewayRenewer(state, audit)
    renewer.thread = threading.Thread(target=renewer.run, name="gateway-cert-renewal", daemon=True)
    renewer.thread.start()
    return renewer


def renewal_status(state: StateDir) -> dict[str, Any] | None:
    """The last renewal attempt recorded by any gateway process, or None."""
    try:
        data: dict[str, Any] = json.loads(state.gateway_renewal_status.read_text())
    except (OSError, ValueError):
        return None
    return data
