"""A bound on requests in flight whose waiters are served oldest reconcile first.

A reconcile makes several requests in a row (a registry lookup, then the version tag's GET and PUT). Under a
burst of new Environments, a first-come-first-served queue per request puts each reconcile's next request behind
every request queued since its last one, so all of them finish together, late: in bench/reconcile.py every
Environment took as long as the whole backlog. Served by when their reconcile began, the requests of the earliest
reconciles go first and those Environments are Ready first, at the same throughput.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

# When the reconcile the current task is running began (time.monotonic()); None outside a reconcile, whose
# requests (probes, base image checks) queue as if begun now.
BEGAN: contextvars.ContextVar[float | None] = contextvars.ContextVar("kenv_reconcile_began", default=None)


@contextmanager
def reconcile_began(at: float) -> Iterator[None]:
    token = BEGAN.set(at)
    try:
        yield
    finally:
        BEGAN.reset(token)


class OldestFirst:
    """An async context manager like asyncio.Semaphore(size), its waiters ordered by BEGAN, earliest first (ties
    and requests outside a reconcile in arrival order)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self.arrivals = itertools.count()

    async def __aenter__(self) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        began = BEGAN.get()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (time.monotonic() if began is None else began, next(self.arrivals), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._pass_on()  # the slot was handed over just as this waiter was cancelled: give it on
            raise  # a cancelled turn stays in the heap until _pass_on skips it

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        self._pass_on()

    def _pass_on(self) -> None:
        while self.waiting:
            _, _, turn = heapq.heappop(self.waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1
