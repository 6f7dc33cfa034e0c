"""The rate-limit primitives of the Redis backend (see limits.py): one Lua script
per check, timed by the Redis server's `TIME`, so every worker counts on one
clock whatever their own clocks say."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, NamedTuple, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from chatsock.store.base import StoreRequestError, StoreUnavailable
from chatsock.store.limits import RateLimits

P = ParamSpec("P")
T = TypeVar("T")

# Prepended to every script: `now` in seconds on the server's clock, `exact`
# (a number as a string that reads back the same: Redis would round it to 14
# digits, 0.1 ms at today's epoch), and `until_last` (a hold set expires with
# its last member, as the presence sets do).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function exact(x) return string.format('%.17g', x) end
local function until_last(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIRE', key, math.ceil((tonumber(last[2]) - now) * 1000)) end
end
"""

# GCRA over every bucket at once, all or nothing (RateLimits._rate_take), in
# whole microseconds. Each key holds its theoretical arrival time, expiring when
# it is reached. KEYS: buckets; ARGV: cost, then each one's interval and tolerance.
_RATE_TAKE = """
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local wait = 0
local arrivals = {}
for i, key in ipairs(KEYS) do
  local arrival = math.max(tonumber(redis.call('GET', key) or 0), now_us)
  arrival = arrival + tonumber(ARGV[2 * i]) * cost
  wait = math.max(wait, arrival - tonumber(ARGV[2 * i + 1]) - now_us)
  arrivals[i] = arrival
end
if wait > 0 then return string.format('%.6f', wait / 1000000) end
for i, key in ipairs(KEYS) do
  local ttl_ms = math.ceil((arrivals[i] - now_us) / 1000)
  redis.call('SET', key, string.format('%.0f', arrivals[i]), 'PX', ttl_ms)
end
return '0'
"""

# KEYS[1]: hold set (member -> deadline); ARGV: member, limit, ttl (s). 1 when held.
_HOLD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', exact(now))
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], exact(now + tonumber(ARGV[3])), ARGV[1])
until_last(KEYS[1])
return 1
"""

# KEYS: one hold set per member; ARGV: ttl (s), then the members.
_REFRESH_HOLDS = """
local deadline = exact(now + tonumber(ARGV[1]))
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', exact(now))
  redis.call('ZADD', key, deadline, ARGV[i + 1])
  until_last(key)
end
return 1
"""

# KEYS[1]: hold set. The members whose deadline has not passed.
_HELD = """
return redis.call('ZCOUNT', KEYS[1], '(' .. exact(now), '+inf')
"""


class _Scripts(NamedTuple):
    rate_take: AsyncScript
    hold: AsyncScript
    refresh_holds: AsyncScript
    held: AsyncScript


def _mapped(
    method: Callable[Concatenate[RedisRateLimits, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisRateLimits, P], Coroutine[Any, Any, T]]:
    """Map Redis and socket errors as `RedisStore` maps its own (redis.py `_mapped`)."""

    async def wrapper(self: RedisRateLimits, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(self, *args, **kwargs)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise self._store_error(exc) from exc

    functools.update_wrapper(wrapper, method)
    return wrapper


class RedisRateLimits(RateLimits):
    """`RateLimits` on `RedisStore`'s client (a mixin placed before it)."""

    if TYPE_CHECKING:  # provided by RedisStore
        url: str
        _client: aioredis.Redis

        def _masked(self, exc: BaseException) -> str: ...

        def unavailable(self, exc: BaseException) -> StoreUnavailable: ...

    def _store_error(self, exc: BaseException) -> Exception:
        # Imported here: redis.py imports this module to build RedisStore.
        from chatsock.store.redis import _rejected

        if _rejected(exc):
            return StoreRequestError(
                f"Redis at {self.url} rejected the request: {self._masked(exc)}"
            )
        return self.unavailable(exc)

    @functools.cached_property
    def _limit_scripts(self) -> _Scripts:
        script = self._client.register_script
        return _Scripts(
            rate_take=script(_NOW + _RATE_TAKE),
            hold=script(_NOW + _HOLD),
            refresh_holds=script(_NOW + _REFRESH_HOLDS),
            held=script(_NOW + _HELD),
        )

    @_mapped
    async def _rate_take(
        self, keys: Sequence[str], shapes: Sequence[tuple[int, int]], cost: int
    ) -> float:
        args: list[int] = [cost]
        for interval, tolerance in shapes:
            args += [interval, tolerance]
        return float(await self._limit_scripts.rate_take(keys=list(keys), args=args))

    @_mapped
    async def _hold(self, key: str, member: str, limit: int, ttl: float) -> bool:
        return bool(await self._limit_scripts.hold(keys=[key], args=[member, limit, ttl]))

    @_mapped
    async def _release(self, key: str, member: str) -> None:
        await self._client.zrem(key, member)

    @_mapped
    async def _refresh_holds(self, pairs: Sequence[tuple[str, str]], ttl: float) -> None:
        keys = [key for key, _ in pairs]
        args: list[float | str] = [ttl, *(member for _, member in pairs)]
        await self._limit_scripts.refresh_holds(keys=keys, args=args)

    @_mapped
    async def _held(self, key: str) -> int:
        return int(await self._limit_scripts.held(keys=[key]))

    @_mapped
    async def _add_usage(self, key: str, amount: int, ttl: int) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, ttl)
            total, _ = await pipe.execute()
        return int(total)

    @_mapped
    async def _usage(self, key: str) -> int:
        return int(await self._client.get(key) or 0)
