"""A memory store that counts token-log reads and can slow or break them (a fake
backend, not a mock): each read may yield to the event loop a few times, as a
network round trip would, or raise."""

from __future__ import annotations

import asyncio
from typing import Any

from chatsock.store.memory import MemoryStore


class CountingStore(MemoryStore):
    """`log_reads` counts reads of any token log. Each read first yields to the
    event loop `read_yields` times; while `read_failure` is set, reads raise it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.log_reads = 0
        self.read_yields = 0
        self.read_failure: Exception | None = None

    async def _log_read(self, key: str, after: int, limit: int | None) -> list[tuple[int, bytes]]:
        self.log_reads += 1
        for _ in range(self.read_yields):
            await asyncio.sleep(0)
        if self.read_failure is not None:
            raise self.read_failure
        return await super()._log_read(key, after, limit)
