"""The state of one stream its runner owns, and the hooks observers attach."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chatsock.fanout import Feed
from chatsock.flush_clock import FlushClock, resolve
from chatsock.lifecycle import Lifecycle
from chatsock.providers.base import ChatRequest, Provider, Signed, Usage
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
    # Text deltas waiting for the next flush, and reasoning deltas apart; `buffered`
    # counts the characters of both (backpressure).
    buffer: list[str] = field(default_factory=list)
    rbuffer: list[str] = field(default_factory=list)
    buffered: int = 0
    count: int = 0  # text deltas received
    rcount: int = 0  # reasoning deltas received
    # The token log's last entry: `seq` is its position, `text_seq` and
    # `reasoning_seq` the last `chat_token` and `chat_reasoning` seqs logged.
    seq: int = 0
    text_seq: int = 0
    reasoning_seq: int = 0
    parts: list[str] = field(default_factory=list)  # the text sent so far
    reasoning_parts: list[str] = field(default_factory=list)  # the reasoning sent so far
    # When the first and the last reasoning delta arrived (monotonic).
    reasoning_from: float | None = None
    reasoning_until: float = 0.0
    signed: tuple[Signed, ...] = ()  # the provider's signed reasoning blocks
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

    @property
    def pending(self) -> bool:
        """Whether deltas wait for a flush."""
        return bool(self.buffer or self.rbuffer)

    def discard(self) -> None:
        """Drop what waits for a flush (it will never be sent)."""
        self.buffer.clear()
        self.rbuffer.clear()
        self.buffered = 0

    def take_reasoning(self, text: str, max_chars: int, hooks: StreamHooks) -> None:
        """Buffer one reasoning delta, as `take` buffers text."""
        if not self.life.streaming or type(text) is not str:
            return
        now = time.monotonic()
        if self.reasoning_from is None:
            self.reasoning_from = now
        self.reasoning_until = now
        if self.first_token_at is None:
            self.first_token_at = now
            if hooks.on_first_token:
                hooks.on_first_token(self.record, now - self.started)
        self.rbuffer.append(text)
        self.buffered += len(text)
        self.rcount += 1
        clock = self.clock
        if clock is None:
            return
        if not self.dirty:
            self.dirty = True
            clock.mark(self, urgent=self.rcount == 1 or self.buffered >= max_chars)
        elif self.buffered >= max_chars:
            clock.hurry()

    def reasoning_ms(self) -> int:
        """How long the model reasoned: its first to its last reasoning delta."""
        if self.reasoning_from is None:
            return 0
        return round((self.reasoning_until - self.reasoning_from) * 1000)

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
