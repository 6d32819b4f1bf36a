"""Serve's rate and concurrency limits (gateway/serve/limits.py): one SQLite file shared by every process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from raywarden.config import ServeLimit
from raywarden.gateway.serve.limits import DEAD_AFTER_S, LimitStore, Over, Ticket

pytestmark = pytest.mark.unit


def test_the_burst_is_shared_by_two_stores_and_refills_at_the_rate(tmp_path: Path) -> None:
    limit = ServeLimit(rate=2, burst=4, concurrency=0)
    one, two = LimitStore(tmp_path / "l.db"), LimitStore(tmp_path / "l.db")
    taken = [(one if i % 2 else two).acquire([("k", limit)], now=100.0) for i in range(5)]
    assert [isinstance(t, Ticket) for t in taken] == [True] * 4 + [False]
    over = taken[-1]
    assert isinstance(over, Over) and over.what == "rate" and over.retry_after == 1
    assert isinstance(one.acquire([("k", limit)], now=100.6), Ticket)  # 1.2 tokens back after 0.6 s


def test_concurrency_counts_calls_under_way_until_released(tmp_path: Path) -> None:
    limit = ServeLimit(rate=0, burst=0, concurrency=2)
    one, two = LimitStore(tmp_path / "l.db"), LimitStore(tmp_path / "l.db")
    first, second = one.acquire([("k", limit)]), two.acquire([("k", limit)])
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    third = one.acquire([("k", limit)])
    assert isinstance(third, Over) and third.what == "concurrency"
    two.release(second)
    assert isinstance(one.acquire([("k", limit)]), Ticket)


def test_nothing_is_taken_when_one_of_the_limits_is_reached(tmp_path: Path) -> None:
    store = LimitStore(tmp_path / "l.db")
    caller, app = ServeLimit(rate=100, burst=100, concurrency=0), ServeLimit(rate=0, burst=0, concurrency=1)
    assert isinstance(store.acquire([("caller", caller), ("app", app)], now=10.0), Ticket)
    refused = store.acquire([("caller", caller), ("app", app)], now=10.0)
    assert isinstance(refused, Over) and refused.key == "app"
    assert store.running("app") == 1
    row = store._db.execute("SELECT tokens FROM buckets WHERE key = 'caller'").fetchone()
    assert row[0] == 99.0  # the refused call took no token


def test_slots_of_a_dead_process_are_cleared(tmp_path: Path) -> None:
    limit = ServeLimit(rate=0, burst=0, concurrency=1)
    dead, alive = LimitStore(tmp_path / "l.db"), LimitStore(tmp_path / "l.db")
    start = time.time()
    assert isinstance(dead.acquire([("k", limit)], now=start), Ticket)
    assert isinstance(alive.acquire([("k", limit)], now=start + 1), Over)
    alive.heartbeat(now=start + DEAD_AFTER_S + 10)  # the other one has not beaten since
    assert isinstance(alive.acquire([("k", limit)], now=start + DEAD_AFTER_S + 11), Ticket)
