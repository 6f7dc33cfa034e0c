"""The store's rate limits: token buckets, counted holds and usage counters.

The contract (`take`, `hold`, `add_usage`...) names keys and checks arguments
once; each backend implements the primitives, atomically (one Lua script on
Redis, an `await`-free method in memory), on its own clock (Redis's `TIME`, so
the workers' clocks do not matter; the worker's monotonic clock in memory).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

from chatsock.store.keys import Keyspace

# Buckets count in whole microseconds, so that no rounding can allow or refuse
# one more unit (Redis's clock is ~1.8e15 us, exact in a Lua number up to 9e15).
_MAX_TOLERANCE_US = 10**15


def _bucket(rate_per_s: float, burst: int) -> tuple[int, int]:
    """A bucket's GCRA (interval, tolerance) in microseconds: one unit per
    interval (rounded up: never faster than `rate_per_s`), `burst` at once."""
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s!r}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1, not {burst!r}")
    interval = math.ceil(1_000_000 / rate_per_s)
    if interval * burst > _MAX_TOLERANCE_US:
        raise ValueError(f"burst / rate_per_s must be at most 10**9 s, not {burst}/{rate_per_s}")
    return interval, interval * burst


class RateLimits(Keyspace):
    """Limits shared by every worker of a store (a mixin of `Store`).

    - `take`: a token bucket (GCRA), e.g. stream starts per user and per IP;
    - `hold`: a counted set whose members expire unless refreshed, e.g. the
      connections of one IP, so a crashed worker's holds go away by themselves;
    - `add_usage` / `usage`: a counter, e.g. a user's output tokens of one day.
    """

    # -- token buckets ----------------------------------------------------
    async def take(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> float:
        """Take `cost` units from the bucket `key` (refilled at `rate_per_s`, holding
        at most `burst`): 0.0 when taken, else the seconds until they would be
        (nothing taken)."""
        return await self.take_all([(key, rate_per_s, burst)], cost)

    async def take_all(self, buckets: Sequence[tuple[str, float, int]], cost: int = 1) -> float:
        """`take` from every (key, rate_per_s, burst) at once, all or nothing: a refusal
        by one bucket costs the others nothing. 0.0 when taken, else the seconds
        until every bucket would allow it."""
        if not buckets:
            return 0.0
        shapes = [_bucket(rate, burst) for _, rate, burst in buckets]
        if cost < 1 or any(cost > burst for _, _, burst in buckets):
            raise ValueError(f"cost must be between 1 and every bucket's burst, not {cost!r}")
        keys = [self._k("rate", key) for key, _, _ in buckets]
        return await self._rate_take(keys, shapes, cost)

    # -- holds ------------------------------------------------------------
    async def hold(self, key: str, member: str, limit: int, ttl_s: float) -> bool:
        """Add `member` to the set `key` for `ttl_s` unless it already holds `limit`
        other members; True when held (holding again renews it)."""
        return await self._hold(self._k("hold", key), member, limit, _positive(ttl_s))

    async def release(self, key: str, member: str) -> None:
        """Drop `member` from the set `key` (nothing if it is not there)."""
        await self._release(self._k("hold", key), member)

    async def refresh_holds(self, key_members: Sequence[tuple[str, str]], ttl_s: float) -> None:
        """Renew each (key, member) hold for `ttl_s`, in one round trip. A hold that
        expired meanwhile is taken again, whatever the limit: its holder is alive."""
        if key_members:
            pairs = [(self._k("hold", key), member) for key, member in key_members]
            await self._refresh_holds(pairs, _positive(ttl_s))

    async def held(self, key: str) -> int:
        """How many unexpired members the set `key` holds."""
        return await self._held(self._k("hold", key))

    # -- usage counters ---------------------------------------------------
    async def add_usage(self, key: str, amount: int, ttl_s: int) -> int:
        """Add `amount` (>= 0) to the counter `key`, which expires `ttl_s` after this
        addition; return its new total."""
        if amount < 0:
            raise ValueError(f"amount must not be negative, not {amount!r}")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1, not {ttl_s!r}")
        return await self._add_usage(self._k("usage", key), amount, ttl_s)

    async def usage(self, key: str) -> int:
        """The counter `key` (0 when absent or expired)."""
        return await self._usage(self._k("usage", key))

    # -- the backend's primitives -----------------------------------------
    @abstractmethod
    async def _rate_take(
        self, keys: Sequence[str], shapes: Sequence[tuple[int, int]], cost: int
    ) -> float:
        """Atomically, on the backend's clock in whole microseconds: each key holds its
        bucket's theoretical arrival time (TAT). With shapes[i] = (interval,
        tolerance), each key's next TAT is max(TAT, now) + interval * cost, allowed
        when at most now + tolerance. If every key allows it, store the next TATs
        (each expiring when reached) and return 0.0; else return the largest next
        TAT - tolerance - now, in seconds."""

    @abstractmethod
    async def _hold(self, key: str, member: str, limit: int, ttl: float) -> bool:
        """Atomically drop expired members, then (re)add `member` with a deadline of
        now + ttl unless it is absent and `limit` members are present."""

    @abstractmethod
    async def _release(self, key: str, member: str) -> None: ...

    @abstractmethod
    async def _refresh_holds(self, pairs: Sequence[tuple[str, str]], ttl: float) -> None:
        """Set each (key, member)'s deadline to now + ttl, adding it if absent."""

    @abstractmethod
    async def _held(self, key: str) -> int:
        """The number of members whose deadline has not passed."""

    @abstractmethod
    async def _add_usage(self, key: str, amount: int, ttl: int) -> int:
        """Atomically add to the counter and set its TTL; return the new total."""

    @abstractmethod
    async def _usage(self, key: str) -> int: ...


def _positive(ttl_s: float) -> float:
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a positive number, not {ttl_s!r}")
    return ttl_s
