"""Waits for new token-log entries, many streams per blocking read.

Every tailer on a worker waits for the next entries of its stream's log. One
`XREAD BLOCK` serves them all: it names every awaited log with the seq its
waiters have, and returns as soon as any of them grows. A wait that comes
while a read is out joins the next one; reads block at most `block_ms`, so
that is the longest such a wait sits out (entries it missed meanwhile are
returned by the next read, which asks from its own seq).

One blocked connection per worker instead of one per followed stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from chatsock.store.base import StoreUnavailable

log = logging.getLogger(__name__)

Entry = tuple[int, bytes]  # seq, data
# Reads {log key: after seq}, blocking up to the given ms; {key: entries past its seq}.
Read = Callable[[dict[str, int], int], Awaitable[dict[str, Sequence[Entry]]]]


@dataclass(eq=False, slots=True)
class _Wait:
    after: int
    deadline: float
    done: asyncio.Future[list[Entry]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class LogWatch:
    """Serves `wait(key, after, timeout)` calls with one read loop at a time."""

    def __init__(self, read: Read, *, block_ms: int = 20) -> None:
        self._read = read
        self._block_ms = block_ms
        self._waits: dict[str, list[_Wait]] = {}
        self._task: asyncio.Task[None] | None = None
        self.reads = 0  # blocking reads issued (for tests and benchmarks)

    async def wait(self, key: str, after: int, timeout_ms: int) -> list[Entry]:
        """Entries of `key` past `after`, waiting up to `timeout_ms` for one; [] on
        timeout. The read's error (StoreUnavailable) is raised to every waiter.

        A wait ends with a read, as a blocking read of its own would: [] once a
        read that ends after its deadline found nothing, so an unreachable store
        raises rather than looking quiet."""
        loop = asyncio.get_running_loop()
        waiting = _Wait(after, loop.time() + timeout_ms / 1000)
        self._waits.setdefault(key, []).append(waiting)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="log watch")
        try:
            return await waiting.done
        finally:
            self._forget(key, waiting)

    def _forget(self, key: str, waiting: _Wait) -> None:
        waits = self._waits.get(key)
        if waits is not None and waiting in waits:
            waits.remove(waiting)
            if not waits:
                del self._waits[key]

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._fail(StoreUnavailable("the store is closed"))

    async def _run(self) -> None:
        while self._waits:
            asked = {key: min(w.after for w in waits) for key, waits in self._waits.items()}
            self.reads += 1
            try:
                found = await self._read(asked, self._block_ms)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._fail(exc)
                return
            now = asyncio.get_running_loop().time()
            for key in list(self._waits):
                entries = found.get(key, ())
                pending: list[_Wait] = []
                for waiting in self._waits[key]:
                    if waiting.done.done():
                        continue
                    fresh = [e for e in entries if e[0] > waiting.after]
                    if fresh:
                        waiting.done.set_result(fresh)
                    elif now >= waiting.deadline:
                        waiting.done.set_result([])
                    else:
                        pending.append(waiting)
                # Served waits leave now: the next read must not ask for them again
                # (it would return at once with what they were just given).
                if pending:
                    self._waits[key] = pending
                else:
                    del self._waits[key]

    def _fail(self, exc: BaseException) -> None:
        """A failed read fails every wait (the next wait starts a new loop)."""
        for waits in self._waits.values():
            for waiting in waits:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
                    waiting.done.exception()  # retrieved here: a waiter may have left
