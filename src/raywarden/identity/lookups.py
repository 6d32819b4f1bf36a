"""The gateway's per-request credential lookups, answered from memory while identity.db has not changed.

Before every answer the cache asks SQLite, on the same connection the lookups use, whether anything was
committed since it filled: ``PRAGMA data_version`` moves when any other connection (the CLI in another
process, another gateway worker, another thread) commits, and the connection's ``total_changes`` moves when
this one wrote. If either moved, everything cached is dropped and read again. So a revocation, a disabled
principal or a changed group is seen on the very next request, exactly as without the cache; what is saved
is the queries and the parsing of their rows, never a check. Anything that depends on the clock (a
certificate's or a token's expiry) is not decided here: the caller checks it on every request.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from raywarden.identity.store import CredentialState, IdentityStore, TokenState, lookup_credential, lookup_token

MAX_ENTRIES = 4096
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class _Stamp:
    """What identity.db looked like to one connection: equal stamps mean nothing was committed in between."""

    connection: sqlite3.Connection  # held, so that a new connection can never reuse its id
    data_version: int
    total_changes: int


class CachedLookups:
    """Not thread-safe: one per event loop (the gateway authenticates on its loop's thread)."""

    def __init__(self, store: IdentityStore, max_entries: int = MAX_ENTRIES) -> None:
        self.store = store
        self._max_entries = max_entries
        self._stamp: _Stamp | None = None
        self._credentials: OrderedDict[tuple[str, str], CredentialState | None] = OrderedDict()
        self._tokens: OrderedDict[tuple[str, str | None], TokenState | None] = OrderedDict()

    def credential(self, table: str, ident: str) -> CredentialState | None:
        """As ``lookup_credential``."""
        return self._answer(self._credentials, (table, ident), lambda: lookup_credential(self.store, table, ident))

    def token(self, jti: str, cert_serial: str | None) -> TokenState | None:
        """As ``lookup_token``."""
        return self._answer(self._tokens, (jti, cert_serial), lambda: lookup_token(self.store, jti, cert_serial))

    def _answer(self, answers: OrderedDict[K, V], key: K, lookup: Callable[[], V]) -> V:
        if self._current() and key in answers:
            answers.move_to_end(key)
            return answers[key]
        answer = answers[key] = lookup()
        while len(answers) > self._max_entries:
            answers.popitem(last=False)
        return answer

    def _current(self) -> bool:
        """Whether the cached answers still hold; if not, they are dropped and the new stamp taken (before the
        lookup that follows, so that no answer is older than its stamp)."""
        with self.store._connect() as db:
            (version,) = db.execute("PRAGMA data_version").fetchone()
            stamp = _Stamp(db, int(version), db.total_changes)
        if stamp == self._stamp:
            return True
        self._credentials.clear()
        self._tokens.clear()
        self._stamp = stamp
        return False
