"""The Redis backend: the store's primitives on `redis.asyncio`, shared by every worker.

Strings hold sessions and stream records, lists hold messages, sorted sets
the indexes, sets the per-session stream slots, and one Redis Stream per chat
stream holds its token log, with entry ID `0-<seq>` so that `XRANGE` and
`XREAD` address seqs directly. A step that must be atomic is one Lua script
that checks first and writes after, so it is all-or-nothing (Redis refuses a
script for lack of memory only before its first write). A Redis reply that
rejects the arguments leaves this module as `StoreRequestError`; every other
Redis or socket error as `StoreUnavailable`, with a message that names the
URL (password masked) and says what to do.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import astuple
from typing import Any, Concatenate, ParamSpec, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError

from chatsock.store.base import (
    KeepAliveKeys,
    RegisterStep,
    Store,
    StoreRequestError,
    StoreUnavailable,
    check_seq,
)
from chatsock.store.models import LogEntry

__all__ = ["RedisStore", "Subscription", "mask_url"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Keep the newest ARGV[2] members; return the ones removed (lowest scores).
_INDEX_TRIM = """
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return {} end
local dropped = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
return dropped
"""

# Prepended to the scripts that use them. `keep` sets a TTL, or none for 0.
# `append` adds a member last to an ordered set (score: the last one's + 1, so
# the order is the order of writes whatever the workers' clocks say), keeps
# the newest `cap` and returns the members it dropped.
_HELPERS = """
local function keep(key, ttl)
  if tonumber(ttl) > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
local function append(key, member, cap, ttl)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local score = 1
  if last[2] then score = tonumber(last[2]) + 1 end
  redis.call('ZADD', key, score, member)
  local dropped = redis.call('ZRANGE', key, 0, -(tonumber(cap) + 1))
  if #dropped > 0 then redis.call('ZREMRANGEBYRANK', key, 0, #dropped - 1) end
  keep(key, ttl)
  return dropped
end
"""

# A stream's registration (see Store.register_stream and RegisterStep): checks
# first, then writes that cannot fail, so it is all or nothing.
# KEYS: cmids, cmid_order, record, slots, lease, streams:active, session streams
# ARGV: stream_id, has_cmid, cmid, ack, record, owner, lease_ttl, started,
#       limit, log_ttl, keep_ttl (0 = none), cap
_REGISTER = """
local id = ARGV[1]
if ARGV[2] == '1' then
  local earlier = redis.call('HGET', KEYS[1], ARGV[3])
  if earlier then return {'earlier', earlier} end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'exists'} end
if redis.call('SISMEMBER', KEYS[4], id) == 0
   and redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[9]) then
  return {'full'}
end
redis.call('SADD', KEYS[4], id)
redis.call('EXPIRE', KEYS[4], ARGV[10])
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[10])
redis.call('SET', KEYS[5], ARGV[6], 'EX', ARGV[7])
redis.call('ZADD', KEYS[6], ARGV[8], id)
append(KEYS[7], id, ARGV[12], ARGV[11])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  for _, old in ipairs(append(KEYS[2], ARGV[3], ARGV[12], ARGV[11])) do
    redis.call('HDEL', KEYS[1], old)
  end
  keep(KEYS[1], ARGV[11])
end
return {'registered'}
"""

# RPUSH unless the item's id is among the ids stored with the list. An id set
# (ZSCORE, O(log n)) rather than a scan of the list: the check costs the same
# whatever the messages' size, covers every message still in the list, and
# holds at most `cap` short ids.
# KEYS: list, ids; ARGV: id, value, ttl (0 = none), cap
_PUSH_ONCE = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
keep(KEYS[1], ARGV[3])
append(KEYS[2], ARGV[1], ARGV[4], ARGV[3])
return 1
"""

# HDEL a field (and its order entry), with ARGV[2] == '1' only if its JSON
# value's stream_id is ARGV[3]. KEYS: hash, order; ARGV: field, check, stream_id
_RELEASE_FIELD = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
if ARGV[2] == '1' and cjson.decode(value)['stream_id'] ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# Eight keys per stream: record, log, slots, lease, stop, session streams,
# cmids, cmid_order. ARGV: owner, lease_ttl, log_ttl, keep_ttl (0 = leave).
# Returns the stop flags.
_KEEP_ALIVE = """
local stopped = {}
for i = 1, #KEYS, 8 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[3])
    redis.call('EXPIRE', KEYS[i + 2], ARGV[3])
    redis.call('SET', KEYS[i + 3], ARGV[1], 'EX', ARGV[2])
    if tonumber(ARGV[4]) > 0 then
      for j = i + 5, i + 7 do redis.call('EXPIRE', KEYS[j], ARGV[4]) end
    end
  end
  stopped[#stopped + 1] = redis.call('EXISTS', KEYS[i + 4])
end
return stopped
"""

# Presence: an ordered set member -> deadline, on the Redis clock so that the
# workers' clocks do not matter. Expired members are dropped on every call.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: presence; ARGV: member, ttl (s). The key lives as long as its last member.
_PRESENCE_MARK = """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) * 1000))
return 1
"""

# KEYS: presence; ARGV: member. 1 when another member is present.
_PRESENCE_OTHERS = """
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then others = others - 1 end
if others > 0 then return 1 end
return 0
"""

# XADD at ID 0-<seq>; a seq at or below the last one is ignored, so a write
# retried after a lost reply cannot fail or duplicate. With a fence (KEYS[2],
# ARGV[5]): refused while KEYS[2] holds a value other than ARGV[5].
_LOG_APPEND = """
if KEYS[2] then
  local holder = redis.call('GET', KEYS[2])
  if holder and holder ~= ARGV[5] then return 0 end
end
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[3], '0-' .. ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller') then
  return added
end
return 1
"""


def mask_url(url: str) -> str:
    """`url` with any password (in the user info or the query) replaced by `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # Without a colon the user info may be a password written as a user name.
        netloc = f"{user}:***@{hostport}" if colon and user else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [parts.password, parts.username if parts.password is None else None]
    found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    return [s for raw in found if raw for s in {raw, unquote(raw), quote(raw, safe="")}]


# Error codes of replies that say the server cannot serve now, not that the
# request was wrong (redis-py gives most other codes their own class).
_SERVER_STATE = ("MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")


def _rejected(exc: BaseException) -> bool:
    """Whether Redis answered `exc` because of the request's arguments."""
    return type(exc) is ResponseError and not str(exc).startswith(_SERVER_STATE)


def _mapped(
    method: Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]]:
    """Turn Redis and socket errors raised by `method` into StoreRequestError
    (a rejected argument) or StoreUnavailable (anything else)."""

    async def wrapper(self: RedisStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(self, *args, **kwargs)
        except (RedisError, OSError) as exc:
            if _rejected(exc):
                raise StoreRequestError(
                    f"Redis at {self.url} rejected the request: {self._masked(exc)}"
                ) from exc
            raise self.unavailable(exc) from exc

    functools.update_wrapper(wrapper, method)
    return wrapper


# Replies as they arrive with decode_responses=False (redis-py types them as bytes | str).
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _seq(entry_id: bytes) -> int:
    return int(entry_id.rpartition(b"-")[2])


def _decoded(members: Any) -> list[str]:
    return [bytes(m).decode() for m in members]


class RedisStore(Store):
    """The store on Redis: every worker pointed at the same URL sees the same data.

    Commands go through one pool with short timeouts and a few quick retries,
    so a Redis restart costs the callers at most a few failed calls. Blocking
    reads (`wait_tokens`) and subscriptions use a second pool so they never
    hold the connections ordinary commands need.
    """

    def __init__(self, url: str, **options: Any) -> None:
        """`options` are the Store's, plus `socket_timeout` (s, default 5), `retries`
        (per command, default 3) and `health_check_interval` (s, default 10)."""
        socket_timeout = float(options.pop("socket_timeout", 5.0))
        retries = int(options.pop("retries", 3))
        health_check_interval = int(options.pop("health_check_interval", 10))
        super().__init__(**options)
        self.url = mask_url(url)
        self._secrets = _secrets(url)
        self.socket_timeout = socket_timeout
        self.health_check_interval = health_check_interval
        common: dict[str, Any] = {
            "decode_responses": False,
            "socket_connect_timeout": socket_timeout,
            "health_check_interval": health_check_interval,
            "retry": Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries),
        }
        self._client = aioredis.Redis.from_url(url, socket_timeout=socket_timeout, **common)
        # No socket timeout: a blocking read is bounded by its own BLOCK argument.
        self._blocking = aioredis.Redis.from_url(url, socket_timeout=None, **common)
        # Subscriptions recover in `Subscription`, which logs every attempt; a
        # silent reconnect inside redis-py would hide an outage from the logs.
        self._listening = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=None,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        script = self._client.register_script
        self._index_trim_script = script(_INDEX_TRIM)
        self._log_append_script = script(_LOG_APPEND)
        self._register_script = script(_HELPERS + _REGISTER)
        self._push_once_script = script(_HELPERS + _PUSH_ONCE)
        self._release_field_script = script(_RELEASE_FIELD)
        self._keep_alive_script = script(_KEEP_ALIVE)
        self._presence_mark_script = script(_NOW + _PRESENCE_MARK)
        self._presence_others_script = script(_NOW + _PRESENCE_OTHERS)

    def _masked(self, exc: BaseException) -> str:
        detail = str(exc) or type(exc).__name__
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return detail

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        """A StoreUnavailable for `exc` that says what to do and never shows a password."""
        detail = self._masked(exc)
        if isinstance(exc, AuthenticationError | AuthorizationError):
            hint = "fix the user name and password in REDIS_URL"
            return StoreUnavailable(f"Redis at {self.url} refused the login ({detail}): {hint}")
        if isinstance(exc, RedisError) and not isinstance(
            exc, aioredis.ConnectionError | aioredis.TimeoutError
        ):
            hint = "check the Redis server's log (memory limit, read-only replica)"
            return StoreUnavailable(f"Redis at {self.url} failed a command ({detail}): {hint}")
        return StoreUnavailable(
            f"Redis is not reachable at {self.url} ({detail}): "
            "start redis-server or unset REDIS_URL for the in-memory store"
        )

    # -- lifecycle --------------------------------------------------------
    async def open(self) -> None:
        """Check that Redis answers; raise StoreUnavailable when it does not."""
        await self.ping()

    async def close(self) -> None:
        await self._client.aclose()
        await self._blocking.aclose()
        await self._listening.aclose()

    @_mapped
    async def ping(self) -> None:
        await self._client.ping()

    # -- strings ----------------------------------------------------------
    @_mapped
    async def _get(self, key: str) -> bytes | None:
        return cast("bytes | None", await self._client.get(key))

    @_mapped
    async def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return cast("list[bytes | None]", await self._client.mget(keys))

    @_mapped
    async def _set(self, key: str, value: bytes, ttl: int | None, *, nx: bool = False) -> bool:
        return bool(await self._client.set(key, value, ex=ttl or None, nx=nx))

    @_mapped
    async def _delete(self, *keys: str) -> int:
        return int(await self._client.delete(*keys))

    # -- hashes and lists -------------------------------------------------
    @_mapped
    async def _field_get(self, key: str, field: str) -> bytes | None:
        return cast("bytes | None", await self._client.hget(key, field))

    @_mapped
    async def _release_field(self, key: str, order: str, field: str, stream_id: str | None) -> bool:
        check = ("1", stream_id) if stream_id is not None else ("0", "")
        return bool(await self._release_field_script(keys=[key, order], args=[field, *check]))

    @_mapped
    async def _push_once(
        self, key: str, ids: str, item_id: str, value: bytes, ttl: int | None, cap: int
    ) -> bool:
        args: list[bytes | str | int] = [item_id, value, ttl or 0, cap]
        return bool(await self._push_once_script(keys=[key, ids], args=args))

    @_mapped
    async def _range(self, key: str) -> list[bytes]:
        return cast("list[bytes]", await self._client.lrange(key, 0, -1))

    @_mapped
    async def _length(self, key: str) -> int:
        return int(await self._client.llen(key))

    # -- ordered index ----------------------------------------------------
    @_mapped
    async def _index_add(self, key: str, member: str, score: float) -> None:
        await self._client.zadd(key, {member: score})

    @_mapped
    async def _index_remove(self, key: str, *members: str) -> None:
        if members:
            await self._client.zrem(key, *members)

    @_mapped
    async def _index_range(self, key: str, limit: int, *, oldest: bool = False) -> list[str]:
        if limit <= 0:
            return []
        read = self._client.zrange if oldest else self._client.zrevrange
        return _decoded(await read(key, 0, limit - 1))

    @_mapped
    async def _index_trim(self, key: str, keep: int) -> list[str]:
        return _decoded(await self._index_trim_script(keys=[key], args=[keep]))

    # -- streams: the atomic steps -----------------------------------------
    @_mapped
    async def _register(self, step: RegisterStep) -> tuple[str, bytes | None]:
        keys = [step.cmids, step.cmid_order, step.record_key, step.slots, step.lease,
                step.index, step.streams]  # fmt: skip
        args: list[bytes | str | int | float] = [
            step.stream_id, "1" if step.cmid is not None else "0", step.cmid or "", step.ack,
            step.record, step.owner, step.lease_ttl, step.started, step.limit, step.log_ttl,
            step.keep_ttl or 0, step.cap,
        ]  # fmt: skip
        reply = await self._register_script(keys=keys, args=args)
        return bytes(reply[0]).decode(), (bytes(reply[1]) if len(reply) > 1 else None)

    @_mapped
    async def _finish(
        self, key: str, value: bytes, ttl: int, slots: str, index: str, member: str
    ) -> bool:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, value, ex=ttl, nx=True)
            pipe.srem(slots, member)
            pipe.zrem(index, member)
            won, _, _ = await pipe.execute()
        return bool(won)

    @_mapped
    async def _keep_alive(
        self,
        streams: Sequence[KeepAliveKeys],
        owner: bytes,
        lease_ttl: int,
        log_ttl: int,
        keep_ttl: int | None,
    ) -> list[bool]:
        keys = [key for s in streams for key in astuple(s)]  # in the script's order
        args: list[bytes | int] = [owner, lease_ttl, log_ttl, keep_ttl or 0]
        return [bool(flag) for flag in await self._keep_alive_script(keys=keys, args=args)]

    # -- presence ---------------------------------------------------------
    @_mapped
    async def _presence_mark(self, key: str, member: str, ttl: float) -> None:
        await self._presence_mark_script(keys=[key], args=[member, ttl])

    @_mapped
    async def _presence_others(self, key: str, member: str) -> bool:
        return bool(await self._presence_others_script(keys=[key], args=[member]))

    # -- sets -------------------------------------------------------------
    @_mapped
    async def _members(self, key: str) -> Sequence[str]:
        return _decoded(await self._client.smembers(key))

    @_mapped
    async def _remove_member(self, key: str, *members: str) -> None:
        if members:
            await self._client.srem(key, *members)

    # -- token logs -------------------------------------------------------
    @_mapped
    async def _log_append(
        self,
        key: str,
        seq: int,
        data: bytes,
        ttl: int,
        cap: int,
        *,
        fence: tuple[str, bytes] | None = None,
    ) -> bool:
        if fence is None:
            return bool(await self._log_append_script(keys=[key], args=[seq, data, cap, ttl]))
        fence_key, holder = fence
        added = await self._log_append_script(
            keys=[key, fence_key], args=[seq, data, cap, ttl, holder]
        )
        return bool(added)

    @_mapped
    async def _log_read(self, key: str, after: int, limit: int | None) -> list[tuple[int, bytes]]:
        if limit is not None and limit <= 0:
            return []
        entries = cast(
            _Entries, await self._client.xrange(key, min=f"(0-{after}", max="+", count=limit)
        )
        return [(_seq(entry_id), fields[b"d"]) for entry_id, fields in entries]

    @_mapped
    async def _log_last(self, key: str) -> int:
        entries = cast(_Entries, await self._client.xrevrange(key, max="+", min="-", count=1))
        return _seq(entries[0][0]) if entries else 0

    @_mapped
    async def _log_lasts(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrevrange(key, max="+", min="-", count=1)
            replies = cast(list[_Entries], await pipe.execute())
        return [_seq(entries[0][0]) if entries else 0 for entries in replies]

    # -- cross-worker helpers --------------------------------------------
    @property
    def shared(self) -> bool:
        return True

    @_mapped
    async def wait_tokens(self, stream_id: str, after: int, timeout_ms: int) -> list[LogEntry]:
        """Log entries with seq > after, waiting up to `timeout_ms` for one; [] on timeout.

        Uses the same log as `read_tokens`, so a worker can tail a stream that
        another worker is generating. `timeout_ms <= 0` polls without waiting.
        """
        check_seq(after)
        key = self._k("stream", stream_id, "log")
        block = timeout_ms if timeout_ms > 0 else None
        # Bounds the wait when the server vanishes without closing the socket.
        async with asyncio.timeout(max(timeout_ms, 0) / 1000 + self.socket_timeout):
            reply = cast(
                list[tuple[bytes, _Entries]],
                await self._blocking.xread({key: f"0-{after}"}, block=block),
            )
        if not reply:
            return []
        entries = reply[0][1]
        return [LogEntry(_seq(eid), orjson.loads(fields[b"d"])) for eid, fields in entries]

    @_mapped
    async def publish(self, channel: str, data: bytes) -> int:
        """Publish `data` on the prefixed `channel`; return how many subscribers got it."""
        return int(await self._client.publish(self._k(channel), data))

    def subscribe(self, *channels: str) -> Subscription:
        """Messages published on the prefixed `channels`, surviving Redis restarts.

        Use as `async with store.subscribe("stop") as sub: async for channel, data in sub:`.
        Entering returns once Redis has confirmed the subscription.
        """
        return Subscription(self, channels)

    def _new_pubsub(self) -> PubSub:
        return self._listening.pubsub()


class Subscription:
    """An async iterator of `(channel, data)` that reconnects and re-subscribes by itself.

    A lost connection is logged at WARNING on each reconnect attempt and at
    INFO once subscribed again; it never ends the iteration. A connection
    that stops answering the periodic PING is treated as lost too, so a
    listener cannot hang silently on a half-open socket.
    """

    _BACKOFF_BASE = 0.1
    _BACKOFF_CAP = 2.0
    _PING = b"chatsock-liveness"

    def __init__(self, store: RedisStore, channels: Sequence[str]) -> None:
        if not channels:
            raise ValueError("subscribe() needs at least one channel")
        self._store = store
        self._names = {store._k(c).encode(): c for c in channels}
        self._pubsub: PubSub | None = None
        self._interval = max(float(store.health_check_interval), 0.5)
        self._last_seen = 0.0
        self._last_ping = 0.0
        self._lost = False

    async def __aenter__(self) -> Subscription:
        await self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._drop()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        loop = asyncio.get_running_loop()
        while True:
            if self._pubsub is None:
                await self._connect()
            assert self._pubsub is not None
            try:
                message = await self._pubsub.get_message(timeout=min(self._interval, 1.0))
                now = loop.time()
                if message is None:
                    if now - self._last_seen > 3 * self._interval:
                        raise aioredis.ConnectionError("no reply to PING")
                    if now - self._last_ping >= self._interval:
                        self._last_ping = now
                        await self._pubsub.ping(self._PING)
                    continue
            except (RedisError, OSError) as exc:
                log.warning(
                    "Redis subscription at %s lost (%s); reconnecting", self._store.url, exc
                )
                self._lost = True
                await self._drop()
                continue
            self._last_seen = now
            name = self._names.get(message["channel"])
            if message["type"] == "message" and name is not None:
                return name, bytes(message["data"])

    async def _connect(self) -> None:
        """Subscribe, retrying with backoff until Redis confirms every channel."""
        attempt = 0
        while True:
            try:
                await self._subscribe_once()
            except (RedisError, OSError) as exc:
                await self._drop()
                attempt += 1
                delay = min(self._BACKOFF_CAP, self._BACKOFF_BASE * 2**attempt)
                log.warning(
                    "Redis subscription at %s: reconnect attempt %d failed (%s); retrying in %.1fs",
                    self._store.url,
                    attempt,
                    self._store.unavailable(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if attempt or self._lost:
                self._lost = False
                log.info(
                    "Redis subscription at %s restored (%d failed attempts)",
                    self._store.url,
                    attempt,
                )
            return

    async def _subscribe_once(self) -> None:
        pubsub = self._pubsub = self._store._new_pubsub()
        await pubsub.subscribe(*self._names)
        pending = set(self._names)
        async with asyncio.timeout(self._store.socket_timeout):
            while pending:
                message = await pubsub.get_message(timeout=self._store.socket_timeout)
                if message is not None and message["type"] == "subscribe":
                    pending.discard(message["channel"])
        self._last_seen = self._last_ping = asyncio.get_running_loop().time()

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except (RedisError, OSError):
                log.debug("closing a lost subscription failed", exc_info=True)
