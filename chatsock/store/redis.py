"""The Redis backend: the store's primitives on `redis.asyncio`, shared by every worker.

Strings hold sessions and stream records, lists hold messages, sorted sets
the indexes, sets the per-session stream slots, and one Redis Stream per chat
stream holds its token log, with entry ID `0-<seq>` so that `XRANGE` and
`XREAD` address seqs directly. Every Redis or socket error leaves this module
as `StoreUnavailable`, with a message that names the URL (password masked)
and says what to do.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from chatsock.store.base import Store, StoreUnavailable
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

# Add ARGV[1] to the set unless it already holds ARGV[2] other members.
_CLAIM_SLOT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1
   or redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

# XADD at ID 0-<seq>; a seq at or below the last one is ignored, so a write
# retried after a lost reply cannot fail or duplicate.
_LOG_APPEND = """
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


def _mapped(
    method: Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]]:
    """Turn Redis and socket errors raised by `method` into StoreUnavailable."""

    async def wrapper(self: RedisStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(self, *args, **kwargs)
        except (RedisError, OSError) as exc:
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
        self._index_trim_script = self._client.register_script(_INDEX_TRIM)
        self._claim_slot_script = self._client.register_script(_CLAIM_SLOT)
        self._log_append_script = self._client.register_script(_LOG_APPEND)

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        """A StoreUnavailable for `exc` that says what to do and never shows a password."""
        detail = str(exc) or type(exc).__name__
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
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
    async def _set(self, key: str, value: bytes, ttl: int | None, *, nx: bool = False) -> bool:
        return bool(await self._client.set(key, value, ex=ttl or None, nx=nx))

    @_mapped
    async def _delete(self, *keys: str) -> int:
        return int(await self._client.delete(*keys))

    # -- hashes -----------------------------------------------------------
    @_mapped
    async def _field_set(
        self, key: str, field: str, value: bytes, ttl: int | None, *, nx: bool = False
    ) -> bool:
        async with self._client.pipeline(transaction=True) as pipe:
            if nx:
                pipe.hsetnx(key, field, value)
            else:
                pipe.hset(key, field, value)
            if ttl:
                pipe.expire(key, ttl)
            else:
                pipe.persist(key)
            written, _ = await pipe.execute()
        return bool(written) or not nx

    @_mapped
    async def _field_get(self, key: str, field: str) -> bytes | None:
        return cast("bytes | None", await self._client.hget(key, field))

    @_mapped
    async def _field_delete(self, key: str, field: str) -> None:
        await self._client.hdel(key, field)

    # -- lists ------------------------------------------------------------
    @_mapped
    async def _push(self, key: str, value: bytes, ttl: int | None, cap: int) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, value)
            pipe.ltrim(key, -cap, -1)
            if ttl:
                pipe.expire(key, ttl)
            else:
                pipe.persist(key)
            await pipe.execute()

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
    async def _index_remove(self, key: str, member: str) -> None:
        await self._client.zrem(key, member)

    @_mapped
    async def _index_range(self, key: str, limit: int) -> list[str]:
        if limit <= 0:
            return []
        return _decoded(await self._client.zrevrange(key, 0, limit - 1))

    @_mapped
    async def _index_trim(self, key: str, keep: int) -> list[str]:
        return _decoded(await self._index_trim_script(keys=[key], args=[keep]))

    # -- sets -------------------------------------------------------------
    @_mapped
    async def _claim_slot(self, key: str, member: str, cap: int, ttl: int) -> bool:
        return bool(await self._claim_slot_script(keys=[key], args=[member, cap, ttl]))

    @_mapped
    async def _members(self, key: str) -> Sequence[str]:
        return _decoded(await self._client.smembers(key))

    @_mapped
    async def _remove_member(self, key: str, member: str) -> None:
        await self._client.srem(key, member)

    # -- token logs -------------------------------------------------------
    @_mapped
    async def _log_append(self, key: str, seq: int, data: bytes, ttl: int, cap: int) -> None:
        await self._log_append_script(keys=[key], args=[seq, data, cap, ttl])

    @_mapped
    async def _log_read(self, key: str, after: int) -> list[tuple[int, bytes]]:
        entries = cast(_Entries, await self._client.xrange(key, min=f"(0-{after}", max="+"))
        return [(_seq(entry_id), fields[b"d"]) for entry_id, fields in entries]

    @_mapped
    async def _log_last(self, key: str) -> int:
        entries = cast(_Entries, await self._client.xrevrange(key, max="+", min="-", count=1))
        return _seq(entries[0][0]) if entries else 0

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
