"""A memory store whose writes can be made to fail or paused (a fake backend, not a mock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from chatsock.store.base import StoreUnavailable
from chatsock.store.memory import MemoryStore
from chatsock.store.primitives import LogAppend, PushOnceOp

Hook = Callable[[], Awaitable[None]]


class FlakyStore(MemoryStore):
    """Injects failures and pauses at the backend's primitives.

    - `fail_assistant_messages` / `fail_user_messages`: appends of those messages
      fail and write nothing.
    - `lose_assistant_replies`: every assistant-message append lands, then fails
      as if its reply was lost; `lose_next_assistant_replies = N` does that N times.
    - `before_assistant_message`, `before_user_message`, `before_end_claim`,
      `before_log_append`: run once before the next such write, so a test can act
      in the middle of a stream's persist, start, end or flush.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fail_assistant_messages = False
        self.fail_user_messages = False
        self.lose_assistant_replies = False
        self.lose_next_assistant_replies = 0
        self.before_assistant_message: Hook | None = None
        self.before_user_message: Hook | None = None
        self.before_end_claim: Hook | None = None
        self.before_log_append: Hook | None = None

    async def _log_append_many(self, appends: Sequence[LogAppend], ttl: int, cap: int) -> list[Any]:
        hook, self.before_log_append = self.before_log_append, None
        if hook is not None:
            await hook()
        return await super()._log_append_many(appends, ttl, cap)

    async def _push_once(self, op: PushOnceOp) -> int:
        if b'"role":"user"' in op.value:
            if self.fail_user_messages:
                raise StoreUnavailable("injected failure: the store refused the write")
            hook, self.before_user_message = self.before_user_message, None
            if hook is not None:
                await hook()
            return await super()._push_once(op)
        if b'"role":"assistant"' not in op.value:
            return await super()._push_once(op)
        if self.fail_assistant_messages:
            raise StoreUnavailable("injected failure: the store refused the write")
        hook, self.before_assistant_message = self.before_assistant_message, None
        if hook is not None:
            await hook()
        stored = await super()._push_once(op)
        if self.lose_assistant_replies or self.lose_next_assistant_replies > 0:
            self.lose_next_assistant_replies -= 1
            raise StoreUnavailable("injected failure: the reply to a write that landed was lost")
        return stored

    async def _set(self, key: str, value: bytes, ttl: int | None, *, nx: bool = False) -> bool:
        if key.endswith(":closer"):
            hook, self.before_end_claim = self.before_end_claim, None
            if hook is not None:
                await hook()
        return await super()._set(key, value, ttl, nx=nx)
