"""The Redis backend: the store's primitives on `redis.asyncio`, shared by every worker."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import astuple
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from chatsock.store import scripts
from chatsock.store.backoff import RetryAtOnce
from chatsock.store.base import Store, StoreRequestError, StoreUnavailable, check_seq
from chatsock.store.log_watch import LogWatch
from chatsock.store.models import Appended, LogEntry
from chatsock.store.primitives import (
    GetOp,
    IndexAddOp,
    KeepAliveKeys,
    LogAppend,
    Op,
    PushOnceOp,
    RegisterStep,
    SetOp,
)
from chatsock.store.redis_limits import RedisRateLimits
from chatsock.store.subscription import Subscription
from chatsock.store.topology import RedisConnections, RedisTopology
from chatsock.store.urls import mask_url

__all__ = ["RedisStore", "Subscription", "mask_url"]

P = ParamSpec("P")
T = TypeVar("T")

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
        except (RedisError, RedisClusterException, OSError) as exc:
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


def _last(entries: _Entries) -> tuple[int, bytes | None]:
    """A log's position and last entry from an XREVRANGE COUNT 1 reply."""
    return (_seq(entries[0][0]), entries[0][1][b"d"]) if entries else (0, None)


def _decoded(members: Any) -> list[str]:
    return [bytes(m).decode() for m in members]


class RedisStore(RedisRateLimits, Store):
    """The store on Redis: every worker pointed at the same URL sees the same data.

    Strings hold sessions and stream records, lists hold messages, sorted sets
    the indexes, sets the per-session stream slots, and one Redis Stream per
    chat stream holds its token log, with entry ID `0-<seq>` so that `XRANGE`
    and `XREAD` address seqs directly. A step that must be atomic is one Lua
    script (scripts.py). A Redis reply that rejects the arguments leaves this
    class as `StoreRequestError`; every other Redis or socket error as
    `StoreUnavailable`, with a message that names the URL (password masked)
    and says what to do.

    Commands go through one pool with short timeouts and a few quick retries,
    so a Redis restart costs the callers at most a few failed calls. Blocking
    reads (`wait_tokens`) and subscriptions use a second pool so they never
    hold the connections ordinary commands need.
    """

    def __init__(self, url: str, **options: Any) -> None:
        """`options` are the Store's, plus `socket_timeout` (s, default 5), `retries`
        (per command, default 3), `health_check_interval` (s, default 10),
        `max_connections` (for commands, default 64) and the topology's
        (topology.py): `sentinels` ((host, port) pairs) with `sentinel_master` and
        `sentinel_password`, or `cluster=True`."""
        socket_timeout = float(options.pop("socket_timeout", 5.0))
        max_connections = int(options.pop("max_connections", 64))
        retries = int(options.pop("retries", 3))
        health_check_interval = int(options.pop("health_check_interval", 10))
        self.topology = RedisTopology(
            url,
            sentinels=tuple(options.pop("sentinels", ())),
            sentinel_master=options.pop("sentinel_master", ""),
            sentinel_password=options.pop("sentinel_password", None),
            cluster=bool(options.pop("cluster", False)),
        )
        # Cluster: one hash tag on every key, so each script, transaction and
        # multi-key read stays in one slot (keys.py).
        super().__init__(hash_tag=self.topology.cluster, **options)
        self.url = self.topology.describe()
        self._secrets = self.topology.secrets()
        self.socket_timeout = socket_timeout
        self.health_check_interval = health_check_interval
        common: dict[str, Any] = {
            "decode_responses": False,
            "socket_connect_timeout": socket_timeout,
            "health_check_interval": health_check_interval,
            # One more, immediate, retry: for a pooled connection a restart killed.
            "retry": Retry(RetryAtOnce(cap=0.5, base=0.05), retries + 1),
        }
        self._connections = RedisConnections(self.topology)
        # A bounded pool that makes a command wait for a free connection: load
        # never opens connections without limit, nor fails with "Too many
        # connections" (redis-py's default pool) while Redis is healthy.
        self._client = self._connections.client(
            max_connections=max_connections,
            pool_timeout=socket_timeout,
            socket_timeout=socket_timeout,
            **common,
        )
        # No socket timeout: a blocking read is bounded by its own BLOCK argument.
        # One read at a time serves every tailer (log_watch.py).
        self._blocking = self._connections.client(socket_timeout=None, **common)
        self._watch = LogWatch(self._watch_read)
        # Subscriptions recover in `Subscription`, which logs every attempt; a
        # silent reconnect inside redis-py would hide an outage from the logs.
        self._listening = self._connections.client(
            decode_responses=False,
            socket_timeout=None,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._subscribed_before = False
        script = self._client.register_script
        self._index_trim_script = script(scripts.INDEX_TRIM)
        self._index_add_script = script(scripts.INDEX_ADD)
        self._log_append_script = script(scripts.LOG_APPEND)
        self._register_script = script(scripts.HELPERS + scripts.REGISTER)
        self._push_once_script = script(scripts.HELPERS + scripts.PUSH_ONCE)
        self._release_field_script = script(scripts.RELEASE_FIELD)
        self._swap_item_script = script(scripts.SWAP_ITEM)
        self._keep_alive_script = script(scripts.KEEP_ALIVE)
        self._presence_mark_script = script(scripts.NOW + scripts.PRESENCE_MARK)
        self._presence_others_script = script(scripts.NOW + scripts.PRESENCE_OTHERS)

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
        await self._watch.close()
        await self._connections.aclose()

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
    async def _push_once(self, op: PushOnceOp) -> int:
        keys = [op.session, op.key, op.ids, *op.indexes]
        args: list[bytes | str | int | float] = [
            op.seen, op.header, op.item_id, op.value, op.ttl or 0, op.cap, op.member, op.score
        ]  # fmt: skip
        return int(await self._push_once_script(keys=keys, args=args))

    @_mapped
    async def _swap_item(self, key: str, guard: str, old: bytes, new: bytes) -> int:
        return int(await self._swap_item_script(keys=[key, guard], args=[old, new]))

    @_mapped
    async def _range(self, key: str) -> list[bytes]:
        return cast("list[bytes]", await self._client.lrange(key, 0, -1))

    @_mapped
    async def _length(self, key: str) -> int:
        return int(await self._client.llen(key))

    # -- ordered index ----------------------------------------------------
    @_mapped
    async def _index_add(self, key: str, member: str, score: float, ttl: int | None = None) -> None:
        if ttl:
            await self._index_add_script(keys=[key], args=[member, score, ttl])
        else:
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
                step.index, step.streams, step.user_slots]  # fmt: skip
        args: list[bytes | str | int | float] = [
            step.stream_id, "1" if step.cmid is not None else "0", step.cmid or "", step.ack,
            step.record, step.owner, step.lease_ttl, step.started, step.limit, step.log_ttl,
            step.keep_ttl or 0, step.cap, step.user_limit,
        ]  # fmt: skip
        reply = await self._register_script(keys=keys, args=args)
        return bytes(reply[0]).decode(), (bytes(reply[1]) if len(reply) > 1 else None)

    @_mapped
    async def _finish(
        self, key: str, value: bytes, ttl: int, slots: Sequence[str], index: str, member: str
    ) -> bool:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, value, ex=ttl, nx=True)
            for slot in slots:
                pipe.srem(slot, member)
            pipe.zrem(index, member)
            won = (await pipe.execute())[0]
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
    async def _batch(self, ops: Sequence[Op]) -> list[object]:
        """Every op in one pipelined round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            for op in ops:
                match op:
                    case GetOp():
                        pipe.get(op.key)
                    case SetOp():
                        pipe.set(op.key, op.value, ex=op.ttl or None, nx=op.nx)
                    case IndexAddOp() if op.ttl:
                        sha = self._index_add_script.sha
                        pipe.execute_command("EVALSHA", sha, 1, op.key, op.member, op.score, op.ttl)
                    case IndexAddOp():
                        pipe.zadd(op.key, {op.member: op.score})
            replies = await pipe.execute(raise_on_error=False)
        results: list[object] = []
        for op, reply in zip(ops, replies, strict=True):
            if isinstance(reply, NoScriptError):
                # A restarted Redis forgot the script: this op alone runs again
                # (its script loads on the way), the others stand.
                if isinstance(op, IndexAddOp):
                    reply = await self._index_add_script(
                        keys=[op.key], args=[op.member, op.score, op.ttl or 0]
                    )
            if isinstance(reply, Exception):
                raise reply
            match op:
                case SetOp():
                    results.append(bool(reply))
                case GetOp():
                    results.append(reply)
                case IndexAddOp():
                    results.append(None)
        return results

    @_mapped
    async def _log_append_many(
        self, appends: Sequence[LogAppend], ttl: int, cap: int
    ) -> list[Appended]:
        """Every append in one pipelined round trip (EVALSHA each: a Script in a
        pipeline costs a SCRIPT EXISTS round trip per execute)."""
        sha = self._log_append_script.sha
        for attempt in (1, 2):
            async with self._client.pipeline(transaction=False) as pipe:
                for a in appends:
                    keys = [a.key]
                    check: tuple[bytes, bytes] = (b"0", b"")
                    if a.epoch is not None:
                        keys.append(a.epoch[0])
                        check = (b"1", a.epoch[1])
                    holder = b""
                    if a.fence is not None:
                        keys.append(a.fence[0])
                        holder = a.fence[1]
                    pipe.execute_command(
                        "EVALSHA", sha, len(keys), *keys, a.seq, a.data, cap, ttl, holder, *check
                    )
                try:
                    return [Appended(int(added)) for added in await pipe.execute()]
                except NoScriptError:
                    if attempt == 2:
                        raise
            # A restarted or flushed Redis forgot the script; the appends are
            # idempotent (by seq), so sending them all again is safe.
            await self._client.script_load(scripts.LOG_APPEND)
        raise AssertionError("unreachable")

    @_mapped
    async def _log_read(self, key: str, after: int, limit: int | None) -> list[tuple[int, bytes]]:
        if limit is not None and limit <= 0:
            return []
        entries = cast(
            _Entries, await self._client.xrange(key, min=f"(0-{after}", max="+", count=limit)
        )
        return [(_seq(entry_id), fields[b"d"]) for entry_id, fields in entries]

    @_mapped
    async def _log_last(self, key: str) -> tuple[int, bytes | None]:
        entries = cast(_Entries, await self._client.xrevrange(key, max="+", min="-", count=1))
        return _last(entries)

    @_mapped
    async def _log_lasts(self, keys: Sequence[str]) -> list[tuple[int, bytes | None]]:
        if not keys:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrevrange(key, max="+", min="-", count=1)
            replies = cast(list[_Entries], await pipe.execute())
        return [_last(entries) for entries in replies]

    # -- cross-worker helpers --------------------------------------------
    @property
    def shared(self) -> bool:
        return True

    async def wait_tokens(self, stream_id: str, after: int, timeout_ms: int) -> list[LogEntry]:
        """Log entries with seq > after, waiting up to `timeout_ms` for one; [] on timeout.

        Uses the same log as `read_tokens`, so a worker can tail a stream that
        another worker is generating. Every wait on this worker shares one
        blocking read (log_watch.py). `timeout_ms <= 0` polls without waiting.
        """
        check_seq(after)
        key = self._k("stream", stream_id, "log")
        if timeout_ms <= 0:
            raw = await self._log_read(key, after, None)
        else:
            raw = await self._watch.wait(key, after, timeout_ms)
        return [LogEntry(seq, orjson.loads(data)) for seq, data in raw]

    @_mapped
    async def _watch_read(
        self, asked: dict[str, int], block_ms: int
    ) -> dict[str, Sequence[tuple[int, bytes]]]:
        streams: dict[Any, Any] = {key: f"0-{after}" for key, after in asked.items()}
        # Bounds the wait when the server vanishes without closing the socket.
        async with asyncio.timeout(block_ms / 1000 + self.socket_timeout):
            reply = cast(
                list[tuple[bytes, _Entries]], await self._blocking.xread(streams, block=block_ms)
            )
        return {
            bytes(key).decode(): [(_seq(eid), fields[b"d"]) for eid, fields in entries]
            for key, entries in reply or ()
        }

    @_mapped
    async def publish(self, channel: str, data: bytes) -> int:
        """Publish `data` on the prefixed `channel`; return how many subscribers got it
        (on a Cluster: those on the node it reached; the others get it too)."""
        return int(await self._client.publish(self._k(channel), data))

    def subscribe(self, *channels: str) -> Subscription:
        """Messages published on the prefixed `channels`, surviving Redis restarts.

        Use as `async with store.subscribe("stop") as sub: async for channel, data in sub:`.
        Entering returns once Redis has confirmed the subscription.
        """
        return Subscription(self, channels)

    async def _new_pubsub(self) -> PubSub:
        """A pub/sub connection. On a Cluster, to any node (PUBLISH reaches the
        subscribers on every node), from a fresh view of the nodes: this runs on
        every reconnect, when the node it had may have gone."""
        if isinstance(self._listening, RedisCluster):
            if self._subscribed_before:
                await self._listening.nodes_manager.initialize()
            else:
                await self._listening.initialize()
            self._subscribed_before = True
            return self._listening.pubsub(node=self._listening.get_random_node())
        return self._listening.pubsub()
