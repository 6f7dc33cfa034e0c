"""python-socketio's Redis manager, with a watchdog on its pub/sub listener.

Session control spans workers through `AsyncRedisManager`: a room-wide emit
without `ignore_queue` (`session_deleted`) and `close_room` reach the room's
members on every worker. Stream events do not travel through it (each worker
emits them locally; see tailer.py). Its listener can go quiet
after Redis drops it (python-socketio #1581), and its retry backoff grows to
a minute. The watchdog publishes a heartbeat through the manager every
`HEARTBEAT_S`; the listener notes everything it hears. When the listener task
has ended, or has heard nothing for `DEAF_AFTER_S`, it is replaced by a fresh
connection and a fresh listener task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio

from chatsock.timing import MANAGER_DEAF_AFTER_S as DEAF_AFTER_S
from chatsock.timing import MANAGER_HEARTBEAT_S as HEARTBEAT_S

log = logging.getLogger(__name__)


class WatchedRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """`AsyncRedisManager` whose listener is restarted when it dies or goes deaf."""

    redis: Any
    pubsub: Any

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url, channel=channel)
        self.last_heard: float | None = None
        self.restarts = 0  # listeners the watchdog replaced
        self.replaced = 0  # listener clients replaced by a reconnect (ours or the base class's)
        # Clients replaced by a reconnect. The base class drops them without
        # closing them, which leaks their sockets; they are closed here.
        self._retired: list[Any] = []
        # Emits go through a client of their own: the base class reconnects
        # (replacing the listener's client) when a publish fails.
        self._publisher: Any = None

    async def _publish(self, data: Any) -> Any:
        """Publish with our own client, which redis-py reconnects by itself, so a
        failed publish never disturbs the listener. Failures are logged, as the
        base class does."""
        try:
            if self._publisher is None:
                module = self._get_redis_module()
                self._publisher = module.Redis.from_url(self.redis_url, **self.redis_options)
            return await self._publisher.publish(self.channel, self.json.dumps(data))
        except Exception as exc:
            log.error("socket.io Redis publish failed: %s", exc)
            return None

    def _redis_connect(self) -> None:
        if self.redis is not None:
            self.replaced += 1
        self._retire_listener_client()
        super()._redis_connect()

    def _retire_listener_client(self) -> None:
        if self.redis is not None:
            self._retired.append((self.pubsub, self.redis))

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for pubsub, redis in retired:
            for resource in (pubsub, redis):
                if resource is None:
                    continue
                try:
                    await resource.aclose()
                except Exception as exc:  # a dead connection may fail to close cleanly
                    log.debug("closing a replaced socket.io Redis client failed: %s", exc)

    async def aclose(self) -> None:
        """Stop the listener and close every Redis client this manager opened."""
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.cancel()
            await asyncio.gather(thread, return_exceptions=True)
        self._retire_listener_client()
        self.redis = self.pubsub = None
        self.connected = False
        if self._publisher is not None:
            self._retired.append((None, self._publisher))
            self._publisher = None
        await self._close_retired()

    async def _listen(self) -> AsyncIterator[Any]:
        async for data in super()._listen():
            self.last_heard = asyncio.get_running_loop().time()
            yield data

    def deaf_for(self) -> float | None:
        if self.last_heard is None:
            return None
        return asyncio.get_running_loop().time() - self.last_heard

    async def watch(self) -> None:
        """Run until cancelled: heartbeat, and restart a dead or deaf listener."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            thread = getattr(self, "thread", None)
            if thread is None:  # not initialised yet (no client has connected)
                started = loop.time()
                continue
            heartbeat = {"method": "chatsock_heartbeat", "host_id": self.host_id}
            try:  # redis-py's own retries must not hold up the watchdog
                await asyncio.wait_for(self._publish(heartbeat), HEARTBEAT_S)
            except TimeoutError:
                log.debug("socket.io heartbeat publish timed out")
            await self._close_retired()
            heard = self.last_heard if self.last_heard is not None else started
            if thread.done() or loop.time() - heard > DEAF_AFTER_S:
                await self._restart_listener(thread)
                started = loop.time()
                self.last_heard = None

    async def _restart_listener(self, thread: asyncio.Task[Any]) -> None:
        self.restarts += 1
        log.warning(
            "socket.io Redis listener %s; restarting it (restart #%d)",
            "ended" if thread.done() else "went deaf",
            self.restarts,
        )
        thread.cancel()
        await asyncio.gather(thread, return_exceptions=True)
        try:
            self._redis_connect()
        except Exception as exc:
            log.warning("socket.io Redis reconnect failed: %s", exc)
        await self._close_retired()
        self.thread = self.server.start_background_task(self._thread)
