"""One flush clock per worker: the ticks that coalesce every stream's text.

A stream with buffered text marks itself dirty; the clock runs a tick at most
every `flush_interval_ms`, and at once for a stream's first text (time to
first token) or a full buffer (`flush_max_chars`). A tick hands every dirty
stream to the runner's batch flush: one token-log round trip for all of them,
then the emits. No timer, future or task wake-up per stream per flush.

The clock's task never dies of a failed tick: the batch flush handles store
outages per stream, and anything else is logged and the clock goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class FlushClock(Generic[T]):
    """Collects dirty items and hands them to `flush` in batches, one batch at a time."""

    def __init__(self, interval_s: float, flush: Callable[[list[T]], Awaitable[None]]) -> None:
        self._interval = interval_s
        self._flush = flush
        self._dirty: list[T] = []
        self._urgent = False
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for_any = False
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0

    def mark(self, item: T, urgent: bool = False) -> None:
        """`item` has text to flush (call once until it is flushed); `urgent`: tick now."""
        self._dirty.append(item)
        self.hurry(urgent)

    def hurry(self, urgent: bool = True) -> None:
        """Wake the clock: for any dirty item if it sleeps idle, now if `urgent`."""
        if urgent:
            self._urgent = True
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (urgent or self._waiting_for_any):
            waiter.set_result(None)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flush clock")

    async def close(self) -> None:
        """Stop ticking (after the streams ended: their final flushes are their own)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _sleep(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._waiting_for_any = deadline is None
        timer = loop.call_at(deadline, resolve, waiter) if deadline is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = -1e9
        while True:
            if not self._dirty:
                await self._sleep(None)
                continue
            due = last + self._interval
            if not self._urgent and loop.time() < due:
                await self._sleep(due)
                continue
            batch, self._dirty, self._urgent = self._dirty, [], False
            last = loop.time()
            self.ticks += 1
            try:
                await self._flush(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("flush tick of %d streams failed", len(batch))


def resolve(waiter: asyncio.Future[None]) -> None:
    """Wake a waiter (timer callbacks and flushes use this)."""
    if not waiter.done():
        waiter.set_result(None)
