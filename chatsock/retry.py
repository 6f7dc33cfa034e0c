"""Riding out a short store outage (a Redis restart) on the stream's write path.

Only idempotent writes may go through `retrying`: an attempt that timed out
may still have landed, and the next attempt writes it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from chatsock.store import StoreUnavailable
from chatsock.timing import STORE_RETRY_S

T = TypeVar("T")


async def retrying(operation: Callable[[], Awaitable[T]], within: float = STORE_RETRY_S) -> T:
    """Retry an idempotent store write through a short outage, then give up.

    The whole call, including an attempt stuck on a stalled connection, is
    bounded by `within`: the end-wait rules in timing.py rely on it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.05
    last: StoreUnavailable | None = None
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                return await operation()
        except TimeoutError:
            raise last or StoreUnavailable(
                f"the store did not answer within {within:g}s; check that Redis is up"
            ) from None
        except StoreUnavailable as exc:
            last = exc
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
