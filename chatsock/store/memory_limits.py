"""The rate-limit primitives of the memory backend (see limits.py).

Each runs without an `await`, so it is atomic under asyncio; times are the
worker's monotonic clock, as the memory store's expiry is. Every key expires
when its last deadline passes and the store's sweep drops it, so memory stays
bounded by the keys used within their TTLs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chatsock.store.limits import RateLimits


class MemoryRateLimits(RateLimits):
    """`RateLimits` on `MemoryStore`'s keys (a mixin placed before it)."""

    if TYPE_CHECKING:  # provided by MemoryStore
        _data: dict[str, Any]

        def _live(self, key: str) -> Any: ...

        def _touch(self, key: str, ttl: float | None) -> None: ...

        def _drop_if_empty(self, key: str) -> None: ...

    async def _rate_take(
        self, keys: Sequence[str], shapes: Sequence[tuple[int, int]], cost: int
    ) -> float:
        now = time.monotonic_ns() // 1000
        arrivals = []
        wait = 0
        for key, (interval, tolerance) in zip(keys, shapes, strict=True):
            arrival = max(self._live(key) or now, now) + interval * cost
            wait = max(wait, arrival - tolerance - now)
            arrivals.append(arrival)
        if wait > 0:
            return wait / 1_000_000
        for key, arrival in zip(keys, arrivals, strict=True):
            self._data[key] = arrival
            self._touch(key, (arrival - now) / 1_000_000)
        return 0.0

    def _members_now(self, key: str, now: float) -> dict[str, float]:
        """The unexpired members (member -> deadline) of a hold set."""
        members: dict[str, float] = self._live(key) or {}
        for member in [m for m, deadline in members.items() if deadline <= now]:
            del members[member]
        return members

    def _keep(self, key: str, members: dict[str, float], now: float) -> None:
        """Store a hold set until its last deadline (dropped when empty, as Redis does)."""
        self._data[key] = members
        if members:
            self._touch(key, max(members.values()) - now)
        else:
            self._drop_if_empty(key)

    async def _hold(self, key: str, member: str, limit: int, ttl: float) -> bool:
        now = time.monotonic()
        members = self._members_now(key, now)
        held = member in members or len(members) < limit
        if held:
            members[member] = now + ttl
        self._keep(key, members, now)
        return held

    async def _release(self, key: str, member: str) -> None:
        now = time.monotonic()
        members = self._members_now(key, now)
        members.pop(member, None)
        self._keep(key, members, now)

    async def _refresh_holds(self, pairs: Sequence[tuple[str, str]], ttl: float) -> None:
        now = time.monotonic()
        for key, member in pairs:
            members = self._members_now(key, now)
            members[member] = now + ttl
            self._keep(key, members, now)

    async def _held(self, key: str) -> int:
        now = time.monotonic()
        members = self._live(key) or {}
        return sum(deadline > now for deadline in members.values())

    async def _add_usage(self, key: str, amount: int, ttl: int) -> int:
        total = int(self._live(key) or 0) + amount
        self._data[key] = total
        self._touch(key, ttl)
        return total

    async def _usage(self, key: str) -> int:
        return int(self._live(key) or 0)
