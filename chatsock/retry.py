"""Riding out a short store outage (a Redis restart) on the stream's write path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from chatsock.store import StoreUnavailable

T = TypeVar("T")
STORE_RETRY_S = 3.0  # how long stream writes ride out a store outage


async def retrying(operation: Callable[[], Awaitable[T]], within: float = STORE_RETRY_S) -> T:
    """Retry a store write through a short outage (a Redis restart), then give up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.05
    while True:
        try:
            return await operation()
        except StoreUnavailable:
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
