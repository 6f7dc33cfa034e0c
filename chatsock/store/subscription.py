"""`Subscription`: a Redis pub/sub that reconnects and re-subscribes by itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisClusterException, RedisError

if TYPE_CHECKING:
    from chatsock.store.redis import RedisStore

# Named as before the split, so that logging settings and filters still apply.
log = logging.getLogger("chatsock.store.redis")


class Subscription:
    """An async iterator of `(channel, data)` that reconnects and re-subscribes by itself.

    A lost connection is retried every `_RETRY_S`, not after a growing backoff:
    a signal published just after Redis comes back (a cross-worker stop) must
    find the listener subscribed again. It is logged at WARNING on the first
    failed attempt and then every `_LOG_EVERY_S`, and at INFO once subscribed
    again; it never ends the iteration. A connection that stops answering the
    periodic PING is treated as lost too, so a listener cannot hang silently on
    a half-open socket.
    """

    # A refused connect costs a fraction of a millisecond; one to an unreachable
    # host is bounded by socket_connect_timeout. So polling this often is cheap.
    _RETRY_S = 0.025
    _LOG_EVERY_S = 5.0
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
            except (RedisError, RedisClusterException, OSError) as exc:
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
        """Subscribe, retrying every `_RETRY_S` until Redis confirms every channel."""
        loop = asyncio.get_running_loop()
        attempt = 0
        logged = -self._LOG_EVERY_S
        while True:
            try:
                await self._subscribe_once()
            except (RedisError, RedisClusterException, OSError) as exc:
                await self._drop()
                attempt += 1
                if loop.time() - logged >= self._LOG_EVERY_S:
                    logged = loop.time()
                    log.warning(
                        "Redis subscription at %s: reconnect attempt %d failed (%s); "
                        "retrying every %gs",
                        self._store.url,
                        attempt,
                        self._store.unavailable(exc),
                        self._RETRY_S,
                    )
                await asyncio.sleep(self._RETRY_S)
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
        pubsub = self._pubsub = await self._store._new_pubsub()
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
            except (RedisError, RedisClusterException, OSError):
                log.debug("closing a lost subscription failed", exc_info=True)
