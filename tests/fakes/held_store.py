"""A Redis store whose reads can be held at chosen points (a fake backend, not a mock).

A test names a read by a predicate on the primitive's arguments; the first
matching call waits until the test releases it, so a request can be paused
at an exact step (a replay's log read, a join's read of the active streams)
while the rest of the system moves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from chatsock.store.redis import RedisStore


class Hold:
    """One pause: the first call whose arguments `match` waits for `release`."""

    def __init__(self, match: Callable[..., bool]) -> None:
        self.match = match
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def take(self, *args: Any) -> bool:
        if self.reached.is_set() or not self.match(*args):
            return False
        self.reached.set()
        await self.release.wait()
        return True


class HeldRedisStore(RedisStore):
    """`holds[primitive]`: pauses for `_log_read(key, after, limit)`,
    `_log_last(key)` and `_log_lasts(keys)`; each is used once."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.holds: dict[str, list[Hold]] = {"_log_read": [], "_log_last": [], "_log_lasts": []}

    def hold(self, primitive: str, match: Callable[..., bool]) -> Hold:
        pause = Hold(match)
        self.holds[primitive].append(pause)
        return pause

    async def _take(self, primitive: str, *args: Any) -> None:
        for pause in self.holds[primitive]:
            if await pause.take(*args):
                return

    async def _log_read(self, key: str, after: int, limit: int | None) -> list[tuple[int, bytes]]:
        await self._take("_log_read", key, after, limit)
        return await super()._log_read(key, after, limit)

    async def _log_last(self, key: str) -> int:
        await self._take("_log_last", key)
        return await super()._log_last(key)

    async def _log_lasts(self, keys: Sequence[str]) -> list[int]:
        await self._take("_log_lasts", keys)
        return await super()._log_lasts(keys)
