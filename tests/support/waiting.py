"""Waiting, in a test, for something another task or process makes true."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def poll_until(condition: Callable[[], bool], within: float, every: float = 0.05) -> bool:
    """Check `condition` every `every` seconds until it holds; its last value after `within`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() >= deadline:
            return condition()
        await asyncio.sleep(every)
    return True
