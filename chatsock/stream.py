"""The state of one stream its runner owns, and the hooks observers attach."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chatsock.fanout import Feed
from chatsock.flush_clock import FlushClock, resolve
from chatsock.lifecycle import Lifecycle
from chatsock.providers.base import ChatRequest, Provider, Usage
from chatsock.store.models import StreamRecord


@dataclass(slots=True)
class StreamHooks:
    """Observers the app wires in (metrics); all optional."""

    on_start: Callable[[StreamRecord], None] | None = None
    on_first_token: Callable[[StreamRecord, float], None] | None = None
    on_flush: Callable[[int], None] | None = None
    on_end: Callable[[StreamRecord, str, float], None] | None = None
    on_failover: Callable[[str], None] | None = None


@dataclass(eq=False)
class ActiveStream:
    """The runner's state for one stream it owns."""

    record: StreamRecord
    request: ChatRequest
    chain: list[Provider]
    feed: Feed
    started: float
    buffer: list[str] = field(default_factory=list)
    buffered: int = 0
    count: int = 0
    seq: int = 0
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    provider: str | None = None
    model: str | None = None
    first_token_at: float | None = None
    life: Lifecycle = field(default_factory=Lifecycle)
    reader: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None
    waiter: asyncio.Future[None] | None = None
    drained: asyncio.Future[None] | None = None
    # The worker's flush clock; `dirty` while the clock holds this stream for its next tick.
    clock: FlushClock[ActiveStream] | None = None
    dirty: bool = False
    # Set while a tick's flush of this stream awaits the store: the end waits for it.
    inflight: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """Wake the stream task: the stream's end was decided."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, text: str, max_chars: int, hooks: StreamHooks) -> None:
        """Buffer one provider delta (the per-delta hot path: keep it small).

        Text only counts while the stream is streaming: once its end is decided,
        what was received before is all that is flushed, persisted and reported."""
        if not self.life.streaming or type(text) is not str:
            return
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            if hooks.on_first_token:
                hooks.on_first_token(self.record, self.first_token_at - self.started)
        self.buffer.append(text)
        self.buffered += len(text)
        self.count += 1
        clock = self.clock
        if clock is None:
            return
        if not self.dirty:
            self.dirty = True
            # The first text goes out at once: time to first token is not batched.
            clock.mark(self, urgent=self.count == 1 or self.buffered >= max_chars)
        elif self.buffered >= max_chars:
            clock.hurry()


__all__ = ["ActiveStream", "StreamHooks", "resolve"]
