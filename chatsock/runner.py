"""The stream runner: owns every stream task from start to persisted end.

A stream is two owned tasks. The *reader* iterates the provider chain (with
first-token/idle timeouts and failover) and appends deltas to a buffer. The
*pump* (the stream task itself) coalesces that buffer into `chat_token`
flushes, at most one per `flush_interval_ms` unless `flush_max_chars` is
reached, appends each flush to the token log and sends it to the room. Stop
and shutdown cancel the reader; the pump then flushes what it holds,
persists the message with its status, and sends the terminal event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from chatsock import protocol
from chatsock.config import Settings
from chatsock.ending import ended_elsewhere, owner_lost
from chatsock.errors import ChatsockError
from chatsock.failover import read_chain
from chatsock.fanout import Fanout
from chatsock.ids import new_id
from chatsock.outcome import discarded, outcome
from chatsock.providers.base import ChatMessage, ChatRequest, ProviderError
from chatsock.providers.registry import ProviderRegistry
from chatsock.requests import ChatStreamRequest
from chatsock.retry import retrying
from chatsock.signals import SignalBus
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import Message, MessageStatus, SessionInfo, StreamRecord, Terminal
from chatsock.stream import ActiveStream, StreamHooks, resolve
from chatsock.timing import UPKEEP_S

__all__ = ["ActiveStream", "StreamHooks", "StreamRunner"]

log = logging.getLogger(__name__)


class StreamRunner:
    """Starts, stops and finishes streams; keeps every task it creates."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: ProviderRegistry,
        fanout: Fanout,
        *,
        worker_id: str,
        bus: SignalBus | None = None,
        hooks: StreamHooks | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._fanout = fanout
        self.worker_id = worker_id
        self.bus = bus
        self.hooks = hooks or StreamHooks()
        self._lease_s = settings.stream.lease_s
        self.streams: dict[str, ActiveStream] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.limits = settings.limits
        self._interval = settings.stream.flush_interval_ms / 1000
        self._max_chars = settings.stream.flush_max_chars

    # -- starting -----------------------------------------------------------
    async def start(self, request: ChatStreamRequest, session_id: str) -> protocol.Payload:
        """Start a stream for `request` in `session_id`; return the `chat_stream` ack."""
        if self._closing:
            raise ChatsockError("server_shutdown", "the server is shutting down; retry shortly")
        cmid = request.client_message_id
        if cmid is not None:
            earlier = await self._store.find_client_message(session_id, cmid)
            if earlier is not None:
                return earlier
        chain = self._registry.chain_for(request.provider)
        now = protocol.now_iso()
        await self._store.ensure_session(SessionInfo(session_id, now, now, owner=None))
        history = await self._history(request, session_id)

        stream_id, message_id = new_id("st"), new_id("msg")
        ack = protocol.stream_ack(stream_id, session_id, message_id)
        first = chain[0]
        record = StreamRecord(
            stream_id=stream_id,
            session_id=session_id,
            message_id=message_id,
            owner=self.worker_id,
            provider=first.name,
            model=first.model_for(ChatRequest([], model=request.model)),
            started_at=now,
            client_message_id=cmid,
        )
        limit = self._settings.limits.max_streams_per_session
        # The lease exists before the stream is visible, so no other worker can
        # find it registered without a live owner and record it as lost.
        await self._store.refresh_lease(stream_id, self.worker_id, self._lease_s)
        if not await self._store.create_stream(record, limit) and not await self._reap(
            session_id, record, limit
        ):
            raise ChatsockError(
                "too_many_streams",
                f"session {session_id} already has {limit} active stream(s); "
                "stop it or wait for it to finish",
            )
        if cmid is not None:
            earlier = await self._store.claim_client_message(session_id, cmid, ack)
            if earlier is not None:  # lost a race with the same client_message_id
                await self._store.finish_stream(record, discarded(record))
                return earlier

        user = Message(new_id("msg"), "user", request.message, now, client_message_id=cmid)
        await self._store.add_message(session_id, user)  # persisted before any provider call

        chat = ChatRequest(
            messages=[*history, ChatMessage("user", request.message)],
            model=request.model,
            system_prompt=request.system_prompt,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
        )
        stream = ActiveStream(
            record=record,
            request=chat,
            chain=chain,
            feed=self._fanout.open(stream_id, session_id),
            started=time.monotonic(),
            provider=record.provider,
            model=record.model,
        )
        self.streams[stream_id] = stream
        stream.task = self._spawn(self._run(stream), f"stream {stream_id}")
        if self.hooks.on_start:
            self.hooks.on_start(record)
        return ack

    async def _history(self, request: ChatStreamRequest, session_id: str) -> list[ChatMessage]:
        limit = self._settings.limits.max_history_messages
        if request.history is not None:
            return [ChatMessage(item.role, item.content) for item in request.history]
        stored = await self._store.get_messages(session_id)
        usable = [m for m in stored if m.content]
        return [ChatMessage(m.role, m.content) for m in usable[-limit:]] if limit else []

    async def _reap(self, session_id: str, record: StreamRecord, limit: int) -> bool:
        """Free slots held by streams whose owner died, then try to register again."""
        reaped = False
        for other in await self._store.active_streams(session_id):
            local = other.stream_id in self.streams
            reaped = await owner_lost(self._store, other, local=local) or reaped
        return reaped and await self._store.create_stream(record, limit)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- stopping -----------------------------------------------------------
    async def stop(self, stream_id: str) -> bool:
        """Stop a stream this worker owns. False when it is not running here."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.end_reason is not None:
            return False
        self._end(stream, "stopped")
        return True

    def _end(self, stream: ActiveStream, reason: str) -> None:
        if stream.end_reason is None:
            stream.end_reason = reason
        if stream.reader is not None:
            stream.reader.cancel()
        stream.wake(urgent=True)

    async def shutdown(self) -> None:
        """End every stream with `server_shutdown`, persist them, and await all tasks."""
        self._closing = True
        for stream in list(self.streams.values()):
            self._end(stream, "server_shutdown")
        if self._tasks:
            grace = self._settings.server.shutdown_grace_s
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def maintain(self) -> None:
        """Run until cancelled: refresh owner leases and honour stop flags (the backup
        for a stop signal this worker missed)."""
        if not self._store.shared:
            return
        refresh_every = self._lease_s / 3
        last_refresh = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(UPKEEP_S)
            streams = [s for s in self.streams.values() if s.end_reason is None]
            try:
                for stream in streams:
                    if await self._store.stop_requested(stream.record.stream_id):
                        log.info("stream %s: stop flag seen", stream.record.stream_id)
                        self._end(stream, "stopped")
                if loop.time() - last_refresh >= refresh_every:
                    for stream in self.streams.values():
                        await self._store.refresh_lease(
                            stream.record.stream_id, self.worker_id, self._lease_s
                        )
                    last_refresh = loop.time()
            except StoreUnavailable as exc:
                log.warning("lease/stop upkeep: %s", exc)

    # -- the stream task ----------------------------------------------------
    async def _run(self, stream: ActiveStream) -> None:
        record = stream.record
        failure: ChatsockError | ProviderError | None = None
        stream.reader = self._spawn(
            read_chain(stream, self._max_chars, self.hooks), f"reader {record.stream_id}"
        )
        try:
            start = protocol.stream_start(
                record.stream_id,
                record.session_id,
                record.message_id,
                stream.provider,
                stream.model,
            )
            await self._fanout.emit(stream.feed, protocol.STREAM_START, start)
            bus = self.bus
            if bus is not None:
                await retrying(lambda: bus.started(record.to_dict(), start))
            await self._pump(stream)
            await asyncio.wait({stream.reader})
            if not stream.reader.cancelled():
                exc = stream.reader.exception()
                if isinstance(exc, ChatsockError | ProviderError):
                    failure = exc
                elif exc is not None:
                    log.error(
                        "stream %s: provider iteration crashed", record.stream_id, exc_info=exc
                    )
                    failure = ChatsockError("internal", "internal error while streaming")
        except asyncio.CancelledError:
            # Hard cancel (shutdown grace exceeded): record the end below, then propagate.
            self._end(stream, "server_shutdown")
            raise
        except StoreUnavailable as exc:
            log.error("stream %s: the store stayed unreachable: %s", record.stream_id, exc)
            failure = ChatsockError("store_unavailable", str(exc), retryable=True)
            self._end(stream, "internal")
        except Exception as exc:
            log.exception("stream %s: flush failed", record.stream_id)
            failure = ChatsockError("internal", f"streaming failed: {exc}")
            self._end(stream, "internal")
        finally:
            if stream.reader is not None and not stream.reader.done():
                stream.reader.cancel()
            await self._finish(stream, failure)

    async def _pump(self, stream: ActiveStream) -> None:
        """Coalesce the buffer into flushes until the reader is done."""
        loop = asyncio.get_running_loop()
        reader = stream.reader
        assert reader is not None
        last_flush = -1e9
        while True:
            if not stream.buffer:
                if reader.done():
                    return
                await self._wait(stream, None, wait_any=True)
                continue
            due = last_flush + self._interval
            if not reader.done() and stream.buffered < self._max_chars and loop.time() < due:
                await self._wait(stream, due, wait_any=False)
                continue
            await self._flush(stream)
            last_flush = loop.time()

    async def _wait(self, stream: ActiveStream, deadline: float | None, *, wait_any: bool) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        stream.waiter, stream.wait_any = waiter, wait_any
        timer = loop.call_at(deadline, resolve, waiter) if deadline is not None else None
        try:
            await waiter
        finally:
            stream.waiter = None
            if timer is not None:
                timer.cancel()

    async def _flush(self, stream: ActiveStream) -> None:
        text = "".join(stream.buffer) if len(stream.buffer) > 1 else stream.buffer[0]
        stream.buffer.clear()
        stream.buffered = 0
        if stream.drained is not None:
            resolve(stream.drained)
            stream.drained = None
        stream.seq += 1
        record = stream.record
        payload = protocol.token(
            record.stream_id, record.session_id, stream.seq, text, stream.count
        )
        await retrying(lambda: self._store.append_token(record.stream_id, stream.seq, payload))
        stream.parts.append(text)
        await self._fanout.emit(stream.feed, protocol.TOKEN, payload, stream.seq)
        if self.hooks.on_flush:
            self.hooks.on_flush(stream.seq)

    # -- the end ------------------------------------------------------------
    async def _finish(
        self, stream: ActiveStream, failure: ChatsockError | ProviderError | None
    ) -> None:
        record = stream.record
        try:
            # Claim the end first: another worker may have taken this stream for
            # lost (our lease lapsed during a Redis outage). Only the claimant
            # persists the reply and records the end, so it is stored once.
            claimed = await self._claim_end(record.stream_id)
            if claimed is False:
                terminal = await self._end_taken(stream, failure)
            else:
                terminal = await self._end_owned(stream, failure, persist=claimed is True)
            await self._fanout.end(stream.feed, terminal)
            if self.hooks.on_end:
                code = terminal.payload.get("code", terminal.status)
                self.hooks.on_end(record, str(code), time.monotonic() - stream.started)
        except Exception:
            log.exception("stream %s: finishing failed", record.stream_id)
        finally:
            self.streams.pop(record.stream_id, None)

    async def _end_owned(
        self, stream: ActiveStream, failure: ChatsockError | ProviderError | None, *, persist: bool
    ) -> Terminal:
        record = stream.record
        if stream.buffer and stream.end_reason != "internal":
            try:
                await self._flush(stream)
            except Exception:
                log.exception("stream %s: final flush failed", record.stream_id)
                stream.buffer.clear()
        text = "".join(stream.parts)
        status, terminal = outcome(stream, failure, text)
        persisted = persist and await self._persist(stream, status, text, terminal)
        if terminal.event == protocol.COMPLETE:
            terminal.payload["persist_failed"] = not persisted
        await self._record_end(record, terminal)
        return terminal

    async def _end_taken(
        self, stream: ActiveStream, failure: ChatsockError | ProviderError | None
    ) -> Terminal:
        """Relay the end recorded by the worker that took this stream for lost."""
        record = stream.record
        stream.buffer.clear()  # the recorded partial is what the log holds
        recorded = await ended_elsewhere(self._store, record.stream_id)
        if recorded is not None:
            return recorded
        # The claimant never recorded an end (it failed too): record ours, not
        # persisted (the claimant may have stored the reply), so the session's
        # stream slot is freed.
        log.warning("stream %s: its end was claimed but never recorded", record.stream_id)
        _, terminal = outcome(stream, failure, "".join(stream.parts))
        await self._record_end(record, terminal)
        return terminal

    async def _record_end(self, record: StreamRecord, terminal: Terminal) -> None:
        try:
            await retrying(lambda: self._store.finish_stream(record, terminal))
        except Exception:
            log.exception("stream %s: could not record its end", record.stream_id)

    async def _claim_end(self, stream_id: str) -> bool | None:
        """True when this worker owns the end, False when another claimed it,
        None when the store stayed unreachable (then nothing is persisted)."""
        try:
            return await retrying(lambda: self._store.claim_end(stream_id, self.worker_id))
        except StoreUnavailable:
            return None

    async def _persist(
        self, stream: ActiveStream, status: MessageStatus, text: str, terminal: Terminal
    ) -> bool:
        record = stream.record
        message = Message(
            record.message_id,
            "assistant",
            text,
            protocol.now_iso(),
            status=status,
            stream_id=record.stream_id,
            provider=stream.provider,
            model=stream.model,
            error_code=terminal.payload.get("code") if status == "error" else None,
        )
        try:
            await retrying(lambda: self._store.add_message(record.session_id, message))
            return True
        except Exception:
            log.exception("stream %s: persisting the reply failed", record.stream_id)
            return False
