"""A memory store whose writes can be made to fail (a fake backend, not a mock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from chatsock.store.base import StoreUnavailable
from chatsock.store.memory import MemoryStore


class FlakyStore(MemoryStore):
    """Fails appends of assistant messages while `fail_assistant_messages` is set
    (nothing is written), and answers them with a failure after the write
    landed while `lose_assistant_replies` is set (a reply lost after the
    RPUSH). Runs `before_assistant_message` (once) before the next one is
    appended, which lets a test act in the middle of a stream's persist."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fail_assistant_messages = False
        self.lose_assistant_replies = False
        self.before_assistant_message: Callable[[], Awaitable[None]] | None = None

    async def _push_once(
        self, key: str, ids: str, item_id: str, value: bytes, ttl: int | None, cap: int
    ) -> bool:
        if b'"role":"assistant"' not in value:
            return await super()._push_once(key, ids, item_id, value, ttl, cap)
        if self.fail_assistant_messages:
            raise StoreUnavailable("injected failure: the store refused the write")
        hook, self.before_assistant_message = self.before_assistant_message, None
        if hook is not None:
            await hook()
        stored = await super()._push_once(key, ids, item_id, value, ttl, cap)
        if self.lose_assistant_replies:
            raise StoreUnavailable("injected failure: the reply to a write that landed was lost")
        return stored
