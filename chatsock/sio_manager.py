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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio
from socketio.redis_manager import parse_redis_sentinel_url

from chatsock.config import StoreConfig
from chatsock.store.topology import master_options
from chatsock.timing import MANAGER_DEAF_AFTER_S as DEAF_AFTER_S
from chatsock.timing import MANAGER_HEARTBEAT_S as HEARTBEAT_S

log = logging.getLogger(__name__)

SENTINEL_SCHEMES = ("redis+sentinel://", "valkey+sentinel://")
# A session delete's stream ends, for the other workers' tails (tailer.py).
ENDS = "chatsock_ends"


def manager_options(store: StoreConfig) -> tuple[str, dict[str, Any]]:
    """The URL and `redis_options` of the manager for the store's Redis topology.

    One server, and a Cluster: REDIS_URL (a PUBLISH on any node of a cluster
    reaches the subscribers on every node). Sentinel: python-socketio's
    `redis+sentinel://` URL, with the master's password and TLS in the options
    rather than in the URL, and the sentinels' own password and TLS.
    """
    if not store.redis_sentinels:
        return store.redis_url, {}
    options = master_options(store.redis_url)
    db = options.pop("db", 0)
    sentinel_kwargs = {k: v for k, v in options.items() if k == "ssl" or k.startswith("ssl_")}
    if store.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = store.redis_sentinel_password.get_secret_value()
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    hosts = ",".join(store.redis_sentinels)
    return f"redis+sentinel://{hosts}/{db}/{store.redis_sentinel_master}", options


async def _closed_now(writer: asyncio.StreamWriter) -> None:
    """Close a stream at once (a TLS one without waiting for the peer's goodbye)."""
    writer.transport.abort()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1)
    except (OSError, TimeoutError):
        pass


class WatchedRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """`AsyncRedisManager` whose listener is restarted when it dies or goes deaf."""

    redis: Any
    pubsub: Any

    def __init__(self, url: str, channel: str, redis_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, channel=channel, redis_options=redis_options)
        self.last_heard: float | None = None
        self.restarts = 0  # listeners the watchdog replaced
        self.replaced = 0  # listener clients replaced by a reconnect (ours or the base class's)
        # Clients replaced by a reconnect. The base class drops them without
        # closing them, which leaks their sockets; they are closed here.
        self._retired: list[Any] = []
        # Emits go through a client of their own: the base class reconnects
        # (replacing the listener's client) when a publish fails.
        self._publisher: Any = None
        self._sentinels: dict[int, Any] = {}  # by id of the master client
        # Handles the ends another worker's session delete hands over; awaited
        # in the listener, so they are relayed before its session_deleted.
        self.on_ends: Callable[[Any], Awaitable[None]] | None = None

    async def publish_ends(self, ends: Any) -> None:
        """Send a session delete's stream ends (JSON) to every other worker."""
        await self._publish({"method": ENDS, "ends": ends, "host_id": self.host_id})

    async def _publish(self, data: Any) -> Any:
        """Publish with our own client, which redis-py reconnects by itself, so a
        failed publish never disturbs the listener. Failures are logged, as the
        base class does."""
        try:
            if self._publisher is None:
                self._publisher = self._new_client()
            return await self._publisher.publish(self.channel, self.json.dumps(data))
        except Exception as exc:
            log.error("socket.io Redis publish failed: %s", exc)
            return None

    def _new_client(self) -> Any:
        """A Redis client as the base class makes one (a Sentinel master for a
        `redis+sentinel://` URL), whose sentinel connections close with it."""
        module = self._get_redis_module()
        if not self.redis_url.startswith(SENTINEL_SCHEMES):
            return module.Redis.from_url(self.redis_url, **self.redis_options)
        sentinels, service_name, options = parse_redis_sentinel_url(self.redis_url)
        sentinel = module.sentinel.Sentinel(sentinels, **{**self.redis_options, **options})
        client = sentinel.master_for(service_name or self.channel)
        self._sentinels[id(client)] = sentinel
        return client

    def _redis_connect(self) -> None:
        if self.redis is not None:
            self.replaced += 1
        self._retire_listener_client()
        # As the base class does, with our client (its Sentinel would leak sockets).
        self.redis = self._new_client()
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    def _retire_listener_client(self) -> None:
        if self.redis is not None:
            self._retired.append((self.pubsub, self.redis))

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for pubsub, redis in retired:
            sentinel = self._sentinels.pop(id(redis), None)
            closing = [] if sentinel is None else sentinel.sentinels
            for resource in (pubsub, redis, *closing):
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
            # A cancelled read drops its connection without waiting for the close,
            # and a TLS close waits for the server: the socket would outlive us.
            listening = getattr(getattr(self.pubsub, "connection", None), "_writer", None)
            thread.cancel()
            await asyncio.gather(thread, return_exceptions=True)
            if listening is not None:
                await _closed_now(listening)
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
            if not await self._handled_ends(data):
                yield data

    async def _handled_ends(self, data: Any) -> bool:
        """Relay a session delete's ends (another worker's); True when `data` was one."""
        if isinstance(data, bytes):
            if ENDS.encode() not in data:  # the cheap test first
                return False
        elif not isinstance(data, str) or ENDS not in data:
            return False
        try:
            message = self.json.loads(data)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("method") != ENDS:
            return False
        if message.get("host_id") != self.host_id and self.on_ends is not None:
            try:
                await self.on_ends(message["ends"])
            except Exception:
                log.exception("relaying a deleted session's stream ends failed")
        return True

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
