"""The access CAs a gateway process trusts now, for the per-request check of a client certificate's issuer.

The TLS layer verifies a client certificate's chain at a full handshake only. A connection kept alive from
before a CA rotation finished, or a TLS session resumed from a ticket issued before it (the tickets belong to
the context a worker started with), carries a certificate from a CA that is no longer trusted. So every
request checks that the certificate was issued by a CA in the trust file the TLS layer verifies against now
(``state.trusted_ca_file``: the bundle during a rotation, else the current CA).

The files are noticed as the TLS context notices them (gateway/tls.py): at most once per CHECK_INTERVAL_S,
by their identity and size, and read whole under the CA lock (never halfway through a rotation's writes).
Each load is a new *generation*; a verdict is cached per (certificate DER, generation), so a request costs a
dictionary look-up once its certificate was checked against the current CAs.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from raywarden.cluster import pkilock
from raywarden.errors import PKIError
from raywarden.gateway.tls import CHECK_INTERVAL_S
from raywarden.pki.ca_keys import CA_LOCK_NAME
from raywarden.pki.certs import fingerprint
from raywarden.pki.rotation import issued_by
from raywarden.state import StateDir, trusted_ca_file

log = logging.getLogger("raywarden.gateway")

FilesStamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class TrustGeneration:
    """One load of the trusted CAs; equal (and hashed) by its number alone, the cache key's second half."""

    number: int
    cas: tuple[x509.Certificate, ...] = field(compare=False)


class AccessTrust:
    """The trusted access CAs of one gateway process, reloaded when their files change."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        # At start-up unreadable trust files are fatal (fail closed); later they keep the last good set.
        self.current = TrustGeneration(0, _load(trusted_ca_file(state, "access")))
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        self._failed: FilesStamp | None = None
        self._issuer_cached = functools.lru_cache(maxsize=1024)(self._issuer)

    def trusted_issuer(self, der: bytes) -> str | None:
        """The SHA-256 fingerprint of the trusted access CA that issued the certificate ``der``, or None."""
        self.refresh()
        return self._issuer_cached(der, self.current)

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the trusted CAs if their files changed. Returns whether a new generation was loaded."""
        now = time.monotonic()
        with self._lock:
            if not force and now < self._next_check:
                return False
            self._next_check = now + CHECK_INTERVAL_S
            if self._files_stamp() == self._stamp:
                return False
            try:
                read = self._read_under_lock()
            except PKIError as exc:
                if self._files_stamp() != self._failed:  # once per set of files, not once per second
                    self._failed = self._files_stamp()
                    log.error("trusted access CAs unreadable, keeping the previous ones: %s", exc.message)
                return False
            if read is None:  # a CA change is being written: look again at the next request
                self._next_check = now
                return False
            self._stamp, cas = read
            self.current, self._failed = TrustGeneration(self.current.number + 1, cas), None
        log.info("trusted access CAs reloaded: %s", ", ".join(fingerprint(ca)[:16] for ca in cas))
        return True

    def _read_under_lock(self) -> tuple[FilesStamp, tuple[x509.Certificate, ...]] | None:
        """The files' stamp and CAs, read while no CA change is being written; None if one is."""
        try:
            with pkilock.holding(self.state.pki_dir / CA_LOCK_NAME, shared=True, blocking=False) as held:
                return (self._files_stamp(), _load(trusted_ca_file(self.state, "access"))) if held else None
        except OSError:
            pass
        # No lock to take (a read-only pki folder, as pki/ca_keys.py's ca_lock allows): read as they are.
        return self._files_stamp(), _load(trusted_ca_file(self.state, "access"))

    def _files_stamp(self) -> FilesStamp:
        found: list[tuple[int, int, int] | None] = []
        for path in (self.state.access_ca_cert, self.state.access_ca_bundle):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                found.append(None)
                continue
            found.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(found)

    @staticmethod
    def _issuer(der: bytes, generation: TrustGeneration) -> str | None:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        # The access CAs have path_length=0: every certificate they vouch for is issued by one of them directly.
        return next((fingerprint(ca) for ca in generation.cas if issued_by(cert, ca)), None)


def _load(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        cas = tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise PKIError(f"{path} holds no usable CA certificate: {exc}") from None
    return cas
