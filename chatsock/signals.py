"""Cross-worker signals over the store's pub/sub: a stream started, stop a stream.

With the memory store there is one worker and nothing to signal. With Redis,
every worker listens; the subscription reconnects by itself after a Redis
restart, and a heartbeat each worker publishes to itself proves the listener
is not deaf (python-socketio #1581 is the failure this guards against).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from chatsock.store import Store, StoreUnavailable
from chatsock.timing import SIGNAL_HEARTBEAT_S

log = logging.getLogger(__name__)

STARTED = "signals:started"
STOP = "signals:stop"

OnStarted = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]
OnStop = Callable[[str], Awaitable[None]]


class SignalBus:
    """Publishes and receives the two cross-worker signals."""

    def __init__(self, store: Store, worker_id: str) -> None:
        self.store = store
        self.worker_id = worker_id
        self.last_heard: float | None = None
        self.connected = asyncio.Event()

    @property
    def active(self) -> bool:
        return self.store.shared

    async def started(self, record: dict[str, Any], start: dict[str, Any]) -> None:
        if self.active:
            await self.store.publish(STARTED, orjson.dumps({"record": record, "start": start}))

    async def stop(self, stream_id: str) -> None:
        if self.active:
            await self.store.publish(STOP, orjson.dumps({"stream_id": stream_id}))

    def deaf_for(self) -> float | None:
        """Seconds since the listener last heard anything (None before it first did)."""
        if self.last_heard is None:
            return None
        return asyncio.get_running_loop().time() - self.last_heard

    async def run(self, on_started: OnStarted, on_stop: OnStop) -> None:
        """Listen until cancelled; reconnects and re-subscribes after any failure."""
        if not self.active:
            return
        heartbeat = asyncio.create_task(self._heartbeat(), name="signal heartbeat")
        try:
            while True:
                try:
                    await self._listen(on_started, on_stop)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the loop must outlive any failure
                    self.connected.clear()
                    log.warning("signal listener failed (%s); resubscribing in 0.5s", exc)
                    await asyncio.sleep(0.5)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _listen(self, on_started: OnStarted, on_stop: OnStop) -> None:
        subscribe: Any = getattr(self.store, "subscribe")  # noqa: B009 - Redis-only API
        async with subscribe(STARTED, STOP) as messages:
            self.connected.set()
            self.last_heard = asyncio.get_running_loop().time()
            async for channel, data in messages:
                self.last_heard = asyncio.get_running_loop().time()
                try:
                    message = orjson.loads(data)
                    if "heartbeat" in message:
                        continue
                    if channel.endswith(STOP):
                        await on_stop(message["stream_id"])
                    else:
                        await on_started(message["record"], message["start"])
                except Exception:
                    log.exception("bad signal on %s: %r", channel, data[:200])

    async def _heartbeat(self) -> None:
        beat = orjson.dumps({"heartbeat": self.worker_id})
        while True:
            await asyncio.sleep(SIGNAL_HEARTBEAT_S)
            try:
                await self.store.publish(STARTED, beat)
            except StoreUnavailable:
                continue
