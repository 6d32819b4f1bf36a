"""How the writer thread hands each caller its outcome: a threading event or an asyncio future."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Waiter:
    """Where the writer thread delivers one caller's outcome."""

    def resolve(self, value: object) -> None:
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        raise NotImplementedError


class SyncWaiter(Waiter):
    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: object = None
        self._error: BaseException | None = None

    def resolve(self, value: object) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def wait(self) -> object:
        self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


class AsyncWaiter(Waiter):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[object] = loop.create_future()

    def resolve(self, value: object) -> None:
        call_in_loop(self.loop, settle, [(self.future, value, None)])

    def fail(self, error: BaseException) -> None:
        call_in_loop(self.loop, settle, [(self.future, None, error)])


class CallbackWaiter(Waiter):
    """Nobody waits: ``on_done`` runs on the writer thread with None once the record is durable, or the error."""

    def __init__(self, on_done: Callable[[BaseException | None], None]) -> None:
        self.on_done = on_done

    def resolve(self, value: object) -> None:
        self.on_done(None)

    def fail(self, error: BaseException) -> None:
        self.on_done(error)


Outcome = tuple["asyncio.Future[object]", object, BaseException | None]


def settle(outcomes: list[Outcome]) -> None:
    for future, value, error in outcomes:
        if future.done():  # the caller was cancelled; its record is on disk regardless
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def call_in_loop(loop: asyncio.AbstractEventLoop, func: Callable[[list[Outcome]], None], arg: list[Outcome]) -> None:
    try:
        loop.call_soon_threadsafe(func, arg)
    except RuntimeError:
        pass  # the loop is closed; nobody is waiting any more


@dataclass
class Item:
    record: dict[str, Any] | None  # None asks for a checkpoint (or, with ``action``, runs it)
    waiter: Waiter
    done: bool = False
    # Run on the writer thread under the writers' lock, after the batch's records (a key rotation).
    action: Callable[[], object] | None = None
