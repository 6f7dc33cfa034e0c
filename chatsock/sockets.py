"""The connected sockets of this worker: who each one is, its event budget, and
the timer that disconnects it when its token expires."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from chatsock.identity import Identity
from chatsock.quotas import EventBudget

log = logging.getLogger(__name__)

Expire = Callable[[str], Coroutine[Any, Any, None]]


@dataclass(eq=False)
class Client:
    """One connected socket."""

    who: Identity
    ip: str | None
    budget: EventBudget
    expiry: asyncio.TimerHandle | None = None


class Sockets:
    """sid -> Client, with the expiry timers and tasks they own."""

    def __init__(self, on_expired: Expire, budget: Callable[[], EventBudget]) -> None:
        self._clients: dict[str, Client] = {}
        self._on_expired = on_expired
        self._budget = budget
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, sid: str, who: Identity, ip: str | None) -> Client:
        client = Client(who, ip, self._budget())
        self._clients[sid] = client
        if who.expires_at is not None:
            delay = max(0.0, who.expires_at - time.time())
            loop = asyncio.get_running_loop()
            client.expiry = loop.call_later(delay, self._expire, sid, client)
        return client

    def get(self, sid: str) -> Client | None:
        return self._clients.get(sid)

    def __len__(self) -> int:
        return len(self._clients)

    def remove(self, sid: str) -> Client | None:
        client = self._clients.pop(sid, None)
        if client is not None and client.expiry is not None:
            client.expiry.cancel()
        return client

    def _expire(self, sid: str, client: Client) -> None:
        if self._clients.get(sid) is not client:
            return
        task = asyncio.get_running_loop().create_task(self._on_expired(sid))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "disconnecting a socket whose token expired failed", exc_info=task.exception()
            )

    async def close(self) -> None:
        """Cancel every timer and expiry task (worker shutdown)."""
        for client in self._clients.values():
            if client.expiry is not None:
                client.expiry.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
