"""A memory store whose writes can be made to fail (a fake backend, not a mock)."""

from __future__ import annotations

from typing import Any

from chatsock.store.base import StoreUnavailable
from chatsock.store.memory import MemoryStore


class FlakyStore(MemoryStore):
    """Fails appends of assistant messages while `fail_assistant_messages` is set."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fail_assistant_messages = False

    async def _push(self, key: str, value: bytes, ttl: int | None, cap: int) -> None:
        if self.fail_assistant_messages and b'"role":"assistant"' in value:
            raise StoreUnavailable("injected failure: the store refused the write")
        await super()._push(key, value, ttl, cap)
