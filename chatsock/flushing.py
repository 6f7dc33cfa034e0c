"""Flushing streams' text: many streams per token-log round trip, then the emits.

A flush takes a stream's buffered deltas as one `chat_token` at the next seq
(and its buffered reasoning, if any, as one `chat_reasoning` before it: each is
an entry of the token log, at consecutive positions).
The flush clock's tick (flush_clock.py) flushes every dirty stream at once:
their appends go to the store together (`Store.append_many`, one pipelined
round trip on Redis), and each is emitted only once it is logged, so a resume
never skips ahead. A stream whose end is decided is left to its own final
flush (`final`), which runs after its end is claimed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from chatsock import protocol
from chatsock.errors import ChatsockError, stream_lost
from chatsock.fanout import Fanout
from chatsock.flush_clock import FlushClock
from chatsock.lifecycle import EndReason
from chatsock.protocol import Payload
from chatsock.retry import retrying
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import Appended, TokenAppend
from chatsock.stream import ActiveStream, StreamHooks, resolve

log = logging.getLogger(__name__)

End = Callable[[ActiveStream, EndReason, ChatsockError | None], object]
Undelivered = Callable[[ActiveStream, StoreUnavailable], None]


class Taken(Exception):
    """A flush was refused: another worker claimed this stream's end."""


# One token-log entry of a flush, a `chat_token` or a `chat_reasoning`: its
# position in the stream's log, its payload, its text, and whether it is
# reasoning. A plain tuple: one is built per flush, on the hot path.
_Entry = tuple[int, Payload, str, bool]


@dataclass(slots=True)
class _Flush:
    """What one flush of a stream logs: its reasoning, then its text (either may be absent)."""

    stream: ActiveStream
    entries: list[_Entry]


class Flusher:
    """The worker's flush clock and what each of its ticks does."""

    def __init__(
        self,
        store: Store,
        fanout: Fanout,
        *,
        worker_id: str,
        interval_s: float,
        hooks: StreamHooks,
        end: End,
        undelivered: Undelivered,
    ) -> None:
        self._store = store
        self._fanout = fanout
        self._worker_id = worker_id
        self.hooks = hooks
        self._end = end
        self._undelivered = undelivered
        self.clock: FlushClock[ActiveStream] = FlushClock(interval_s, self.tick)
        # Flushes whose append timed out, by stream id: they may still land (see `settled`).
        self._unsure: dict[str, _Flush] = {}

    async def tick(self, batch: list[ActiveStream]) -> None:
        """Flush every stream of `batch` that still streams and holds text."""
        flushes: list[_Flush] = []
        for stream in batch:
            stream.dirty = False
            # A stream whose end is decided keeps its text for its final flush.
            if stream.pending and stream.life.streaming:
                flushes.append(_take(stream))
        if not flushes:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for flush in flushes:
            flush.stream.inflight = done
        try:
            await self._tick(flushes)
        finally:
            resolve(done)
            for flush in flushes:
                if flush.stream.inflight is done:
                    flush.stream.inflight = None

    async def _tick(self, flushes: list[_Flush]) -> None:
        try:
            appended = await self._append(flushes)
        except StoreUnavailable as exc:
            log.error("the token log stayed unreachable for %d streams: %s", len(flushes), exc)
            for flush in flushes:
                self._unsure[flush.stream.record.stream_id] = flush
                self._undelivered(flush.stream, exc)
            return
        except Exception as exc:
            # Part of the batch may be logged (a pipeline is not a transaction) and
            # a seq at or below the last is ignored as a retry: no later flush of
            # these streams may reuse their seqs, so they end here, undelivered.
            log.exception("appending the text of %d streams failed", len(flushes))
            lost = StoreUnavailable(f"the token log refused a write: {type(exc).__name__}")
            for flush in flushes:
                self._undelivered(flush.stream, lost)
            return
        answers = iter(appended)
        for flush in flushes:
            stream = flush.stream
            oks = [next(answers) for _ in flush.entries]
            try:
                refused = await self._deliver(flush, oks)
            except Exception as exc:
                log.exception("stream %s: flush failed", stream.record.stream_id)
                failure = ChatsockError("internal", f"streaming failed: {type(exc).__name__}")
                self._end(stream, EndReason.INTERNAL, failure)
                continue
            if refused is Appended.LOST:
                self._lost(stream)
            elif refused is Appended.TAKEN:
                log.warning(
                    "stream %s: taken for lost by another worker; relaying",
                    stream.record.stream_id,
                )
                stream.discard()
                self._end(stream, EndReason.TAKEN, None)

    async def settled(self, stream: ActiveStream) -> None:
        """Wait until no tick is flushing `stream` (never cancels the shared tick)."""
        inflight = stream.inflight
        if inflight is not None:
            await asyncio.wait({inflight})
        await self._reconcile(stream)

    async def _reconcile(self, stream: ActiveStream) -> None:
        """A flush whose append timed out may still land: a stalled Redis runs the
        queued command when it resumes. Append it again (idempotent by seq) and, once
        logged, deliver it, so that followers, log and recorded partial agree. While
        the store stays away it is left out (the stream ends store_unavailable)."""
        flush = self._unsure.pop(stream.record.stream_id, None)
        if flush is None:
            return
        try:
            appended = await self._append([flush])
        except StoreUnavailable:
            return
        if await self._deliver(flush, appended) is Appended.LOST:
            self._lost(stream)

    def _lost(self, stream: ActiveStream) -> None:
        """The store lost the stream's log (a failover to a replica that lagged, a
        flush): end it with `stream_lost` and the text sent so far, whatever end was
        decided before; nothing more is appended (the log would have a hole)."""
        log.warning(
            "stream %s: the store lost its token log (a Redis failover or flush?); ending it",
            stream.record.stream_id,
        )
        stream.life.undelivered(stream_lost(stream.record.stream_id))
        stream.discard()
        if stream.reader is not None:
            stream.reader.cancel()
        stream.wake()

    async def final(self, stream: ActiveStream) -> None:
        """Flush what `stream` holds after its end was claimed; Taken if refused."""
        await self.settled(stream)
        if not stream.pending:
            return
        flush = _take(stream)
        refused = await self._deliver(flush, await self._append([flush]))
        if refused is Appended.LOST:
            self._lost(stream)
        elif refused is Appended.TAKEN:
            raise Taken(stream.record.stream_id)

    async def _append(self, flushes: list[_Flush]) -> list[Appended]:
        # Logged before it is sent, so a resume can never skip ahead. Refused once
        # another worker has taken the stream for lost: nothing goes past its partial.
        # Refused too when the log is not the stream's epoch's (the store lost it).
        # Idempotent by seq, so the whole batch may be retried. One answer per entry.
        appends = [
            TokenAppend(
                f.stream.record.stream_id, seq, payload, self._worker_id, f.stream.record.epoch
            )
            for f in flushes
            for seq, payload, _, _ in f.entries
        ]
        return await retrying(lambda: self._store.append_many(appends))

    async def _deliver(self, flush: _Flush, appended: list[Appended]) -> Appended:
        """Send the flush's entries the store logged, in order, up to the first it
        refused; return that refusal (OK when all were logged)."""
        stream = flush.stream
        for (seq, payload, text, reasoning), ok in zip(flush.entries, appended, strict=True):
            if ok is not Appended.OK:
                return ok
            if stream.feed.terminal is not None:
                # Its end went out while this tick was in flight (a stream hard-cancelled
                # at shutdown, waiting on a stalled store): nothing may follow a terminal,
                # and the partial it carried is what the followers hold.
                return Appended.OK
            stream.seq = seq
            if reasoning:
                stream.reasoning_seq += 1
                stream.reasoning_parts.append(text)
            else:
                stream.text_seq += 1
                stream.parts.append(text)
            await self._fanout.emit_entry(stream.feed, seq, payload)
            if self.hooks.on_flush:
                self.hooks.on_flush(seq)
        return Appended.OK


def _take(stream: ActiveStream) -> _Flush:
    """The stream's buffered deltas as its next log entries (the buffers are emptied):
    a `chat_reasoning` first if it reasoned, then a `chat_token` if it wrote."""
    stream.buffered = 0
    if stream.drained is not None:
        resolve(stream.drained)
        stream.drained = None
    record = stream.record
    seq = stream.seq + 1
    entries: list[_Entry] = []
    parts = stream.rbuffer
    if parts:
        text = "".join(parts)
        parts.clear()
        rseq = stream.reasoning_seq + 1
        payload = protocol.reasoning(record.stream_id, record.session_id, rseq, text)
        entries.append((seq, payload, text, True))
        seq += 1
    parts = stream.buffer
    if parts:
        text = "".join(parts) if len(parts) > 1 else parts[0]
        parts.clear()
        tseq = stream.text_seq + 1
        payload = protocol.token(record.stream_id, record.session_id, tseq, text, stream.count)
        entries.append((seq, payload, text, False))
    return _Flush(stream, entries)
