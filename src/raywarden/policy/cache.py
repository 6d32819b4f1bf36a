"""A bounded cache of Cedar's decisions, keyed on exactly what the deciding policies can read.

The engine builds the key (raywarden.policy.engine); this module makes request values hashable without
letting two different Cedar inputs share a key, and bounds what the cache holds by entries and by weight.
It stores only decisions Cedar made: a miss is decided by Cedar and then stored, never derived.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from raywarden.errors import RaywardenError
from raywarden.policy.request import Decision

DEFAULT_MAX_ENTRIES = 65_536
DEFAULT_MAX_WEIGHT = 32 * 2**20  # about the bytes the keys hold
# Distinct (action, principal, context) parts of keys kept interned: a gateway serves few principals, and
# contexts vary only where a policy reads a field that changes per request.
MAX_TOKENS = 16_384

# Tags that keep values of different Cedar types apart once frozen: Python says True == 1 and 1 == 1.0,
# Cedar does not, and a list and a record must not freeze alike.
_TRUE, _FALSE, _LIST, _RECORD, _FLOAT = (object() for _ in range(5))
_DECISION_WEIGHT = 256


class Uncacheable(RaywardenError):
    """A request whose decision the cache cannot key safely; Cedar decides it every time."""


def freeze(value: Any) -> Hashable:
    """A hashable value equal to another's exactly when both are the same Cedar input.

    Entity references inside a value (``{"__entity": ...}``) make a decision depend on other entities of the
    store, which no key here describes: such a request is never cached. So is anything that is not plain JSON.
    """
    kind = type(value)
    if kind is str or kind is int:
        frozen: Hashable = value
        return frozen
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is list or kind is tuple:  # most are sets of strings: those need no call per element
        return (_LIST, *[item if type(item) is str else freeze(item) for item in value])
    if kind is dict:
        if "__entity" in value:
            raise Uncacheable("an entity reference in a value")
        if not all(type(k) is str for k in value):
            raise Uncacheable("a record key that is not a string")
        return (_RECORD, *sorted((k, freeze(item)) for k, item in value.items()))
    if kind is float:
        return (_FLOAT, value)
    raise Uncacheable(f"a value of type {kind.__name__}")


def weigh(key: Hashable) -> int:
    """Roughly the bytes a key keeps alive."""
    if isinstance(key, str):
        return 49 + len(key)
    if isinstance(key, tuple):
        return 40 + 8 * len(key) + sum(weigh(item) for item in key)
    return 32


class DecisionCache:
    """Least recently used decisions, at most ``max_entries`` of them and about ``max_weight`` bytes of keys.

    One entry never takes more than 1/64 of the weight (a submission with an enormous runtime_env is decided
    by Cedar each time instead of pushing everything else out). ``max_entries=0`` caches nothing.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_weight: int = DEFAULT_MAX_WEIGHT) -> None:
        self.max_entries = max(0, max_entries)
        self.max_weight = max(0, max_weight)
        self._entries: OrderedDict[Hashable, tuple[Decision, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()
        self._tokens: dict[Hashable, int] = {}
        self._next_token = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def weight(self) -> int:
        return self._weight

    def token(self, outer: Hashable) -> int:
        """A small number standing for the shared part of many keys (action, principal, context). Numbers are
        never reused, so a part forgotten to stay bounded never answers for another."""
        found = self._tokens.get(outer)
        if found is None:
            with self._lock:
                found = self._next_token
                self._next_token += 1
                if len(self._tokens) >= MAX_TOKENS:
                    self._tokens.pop(next(iter(self._tokens)))
                self._tokens[outer] = found
        return found

    def get(self, key: Hashable) -> Decision | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        try:
            self._entries.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile: the decision is still Cedar's
            pass
        return found[0]

    def get_many(self, token: int, parts: list[Hashable | None]) -> tuple[list[Decision | None], bool]:
        """``get((token, part))`` for each part (None for a part without a key): a job list in one loop. Also
        says whether every part was found."""
        entries = self._entries
        found: list[Decision | None] = []
        hits = misses = 0
        for part in parts:
            try:
                entry = entries.get((token, part)) if part is not None else None
            except TypeError:  # an unhashable value: no key, Cedar decides
                entry = None
            if entry is None:
                misses += part is not None
                found.append(None)
                continue
            hits += 1
            try:
                entries.move_to_end((token, part))
            except KeyError:  # evicted by another thread meanwhile: the decision is still Cedar's
                pass
            found.append(entry[0])
        self.hits += hits
        self.misses += misses
        return found, hits == len(parts)

    def put(self, key: Hashable, decision: Decision) -> None:
        if not self.max_entries:
            return
        weight = weigh(key) + _DECISION_WEIGHT
        if weight > self.max_weight // 64:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._entries[key] = (decision, weight)
            self._weight += weight
            while len(self._entries) > self.max_entries or self._weight > self.max_weight:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._weight -= dropped
