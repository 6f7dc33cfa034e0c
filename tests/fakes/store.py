"""A memory store whose writes can be made to fail (a fake backend, not a mock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from chatsock.store.base import StoreUnavailable
from chatsock.store.memory import MemoryStore


class FlakyStore(MemoryStore):
    """Fails appends of assistant messages while `fail_assistant_messages` is set,
    and runs `before_assistant_message` (once) before the next one is appended,
    which lets a test act in the middle of a stream's persist."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fail_assistant_messages = False
        self.before_assistant_message: Callable[[], Awaitable[None]] | None = None

    async def _push(self, key: str, value: bytes, ttl: int | None, cap: int) -> None:
        if b'"role":"assistant"' in value:
            if self.fail_assistant_messages:
                raise StoreUnavailable("injected failure: the store refused the write")
            hook, self.before_assistant_message = self.before_assistant_message, None
            if hook is not None:
                await hook()
        await super()._push(key, value, ttl, cap)
