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
    row = store._db.execute("SELECT tokens FROM token_buckets WHERE key = 'caller'").fetchone()
    assert row[0] == 99.0  # the refused call took no token


def test_slots_of_a_dead_process_are_cleared(tmp_path: Path) -> None:
    limit = ServeLimit(rate=0, burst=0, concurrency=1)
    dead, alive = LimitStore(tmp_path / "l.db"), LimitStore(tmp_path / "l.db")
    start = time.time()
    assert isinstance(dead.acquire([("k", limit)], now=start), Ticket)
    assert isinstance(alive.acquire([("k", limit)], now=start + 1), Over)
    alive.heartbeat(now=start + DEAD_AFTER_S + 10)  # the other one has not beaten since
    assert isinstance(alive.acquire([("k", limit)], now=start + DEAD_AFTER_S + 11), Ticket)


def test_an_idle_hour_gives_a_slow_bucket_back_no_more_than_its_rate(tmp_path: Path) -> None:
    """A per-application limit slower than its burst per hour (an expensive model: 10 calls at once, then one
    every 20 minutes) must not be refilled whole after an idle hour: a bucket the heartbeat removes must be one
    that its rate has filled again."""
    slow = ServeLimit(rate=1 / 1200, burst=10, concurrency=0)
    store = LimitStore(tmp_path / "l.db")
    start = time.time()  # the store beat its heartbeat at its creation, on the real clock
    for _ in range(10):
        assert isinstance(store.acquire([("k", slow)], now=start), Ticket)
    assert isinstance(store.acquire([("k", slow)], now=start + 600), Over)  # half a call back after 10 minutes
    for minute in range(1, 61):  # the gateway's heartbeat, every minute of that hour
        store.heartbeat(now=start + 60 * minute)
    # Nothing was taken for an hour, so the bucket went; three calls' worth came back at the rate, not ten.
    later = start + 3600 + 10
    store.heartbeat(now=later)
    taken = [store.acquire([("k", slow)], now=later) for _ in range(10)]
    assert sum(isinstance(t, Ticket) for t in taken) <= 3, taken
