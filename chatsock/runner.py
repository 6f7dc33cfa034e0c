"""The stream runner: owns every stream task from start to persisted end.

A stream is two owned tasks. The *reader* iterates the provider chain (with
first-token/idle timeouts and failover) and appends deltas to a buffer. The
worker's flush clock (flushing.py) coalesces every stream's buffer into
`chat_token` flushes, at most one per `flush_interval_ms` unless
`flush_max_chars` is reached, appends them to the token logs in one round
trip and sends each to its room. The stream task itself waits for the end.
How a stream ends is decided once, in its `Lifecycle` (lifecycle.py); the
stream task then flushes what is left, persists the message with its status,
and sends the terminal event.

Starting is transactional: the stream is registered in one atomic store
step (idempotency key, slot, record, lease), and a failure of any later step
of `start()` ends the registered stream cleanly instead of leaving it held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatsock import protocol
from chatsock.closing import EndRecorder
from chatsock.config import Settings
from chatsock.ending import Claim, claim_end, owner_lost
from chatsock.errors import ChatsockError, no_session
from chatsock.failover import read_chain
from chatsock.fanout import Fanout
from chatsock.flushing import Flusher
from chatsock.identity import ANONYMOUS, ANONYMOUS_USER, Identity
from chatsock.ids import derived_id, new_id
from chatsock.lifecycle import EndReason, Phase
from chatsock.logsafe import bind_stream
from chatsock.outcome import error_terminal, outcome
from chatsock.policy import prompt_chars, trim_history
from chatsock.providers.base import ChatMessage, ChatRequest, ProviderError
from chatsock.providers.registry import ProviderRegistry
from chatsock.regenerate import Regenerate
from chatsock.requests import ChatStreamRequest
from chatsock.retry import retrying
from chatsock.signals import SignalBus
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import Message, SessionInfo, StreamRecord, Terminal
from chatsock.stream import ActiveStream, StreamHooks
from chatsock.timing import END_POLL_S, READER_CLOSE_S, STOP_ACK_WAIT_S, UPKEEP_S

__all__ = ["ActiveStream", "StreamHooks", "StreamRunner"]

log = logging.getLogger(__name__)

Admit = Callable[[], None]

# How often upkeep drops the memory store's expired keys (token logs after
# stream.log_ttl), so that memory comes back on an idle worker too.
SWEEP_S = 10.0


def _admit(admit: Admit | None) -> None:
    """Let the caller join the session's room; a caller that vanished meanwhile
    (its socket disconnected) does not undo the accepted stream."""
    if admit is None:
        return
    try:
        admit()
    except Exception as exc:
        log.info("the requester of a stream left before it started: %s", exc)


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
        self._hooks = hooks or StreamHooks()
        # Counts a finished reply's output tokens against its user's budget (quotas).
        self.charge: Callable[[str, int], Awaitable[None]] | None = None
        self._lease_s = settings.stream.lease_s
        # Every stream this worker owns, from its registration until its
        # terminal event is sent. Iterate over a snapshot across any await.
        self.streams: dict[str, ActiveStream] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ends = EndRecorder(store, worker_id)
        self._closing = False
        self.limits = settings.limits
        self._max_chars = settings.stream.flush_max_chars
        self.flusher = Flusher(
            store,
            fanout,
            worker_id=worker_id,
            interval_s=settings.stream.flush_interval_ms / 1000,
            hooks=self._hooks,
            end=self._end,
            undelivered=self._undelivered,
        )

    @property
    def hooks(self) -> StreamHooks:
        return self._hooks

    @hooks.setter
    def hooks(self, hooks: StreamHooks) -> None:
        self._hooks = self.flusher.hooks = hooks

    def owns(self, stream_id: str) -> bool:
        """Whether this worker owns the stream: running here, or ended here with its
        end still owed to the store (never to be taken for lost by this worker)."""
        return stream_id in self.streams or stream_id in self.ends.pending

    def started_streams(self) -> list[ActiveStream]:
        """A snapshot of the streams past their start (a starting stream's requester
        joins its room only once it is accepted, so it has no follower yet)."""
        return [s for s in self.streams.values() if s.life.phase is not Phase.STARTING]

    @property
    def task_count(self) -> int:
        """Tasks this runner owns that have not finished (streams and their readers)."""
        return len(self._tasks)

    # -- starting -----------------------------------------------------------
    async def start(
        self,
        request: ChatStreamRequest,
        session_id: str,
        who: Identity = ANONYMOUS,
        admit: Admit | None = None,
        repeated: Admit | None = None,
        regenerate: Regenerate | None = None,
    ) -> protocol.Payload:
        """Start a stream for `request` in `session_id` on behalf of `who`; return
        the `chat_stream` ack. A session that does not exist is created, owned by
        `who`; another user's session is `not_found`, as a missing one would be.

        `admit` runs once the request is accepted (a new stream, or the earlier
        stream of a repeated `client_message_id`), before any of its events is
        sent: the caller joins the session's room there, never before. `repeated`
        runs after it when the ack is that earlier stream's, which may be midway:
        an HTTP retry replays it rather than join it live.

        With `regenerate` (regenerate.py) the reply answers the session's last user
        message (`request.message`), stores no user message, and replaces the
        reply `regenerate.message_id` once it ends."""
        self._refuse_if_closing()
        chain = self._registry.chain_for(request.provider)
        now = protocol.now_iso()
        # Created with its owner in one NX write: two users racing for a new id
        # cannot both own it.
        header = SessionInfo(session_id, now, now, owner=who.user)
        if regenerate is None:
            info: SessionInfo | None = await self._store.ensure_session(header)
        else:  # a stored session's reply: one deleted meanwhile is not made again
            info = await self._store.get_session(session_id)
        if info is None or (info.owner or ANONYMOUS_USER) != who.user:
            raise no_session(session_id)
        # A session this call created has no stored history to read.
        history = await self._history(
            request, session_id, stored=info is not header, regenerate=regenerate
        )

        cmid = request.client_message_id
        stream_id = new_id("st")
        message_id = regenerate.message_id if regenerate is not None else new_id("msg")
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
            user=who.user,
            regenerates=regenerate.message_id if regenerate is not None else None,
        )
        ack = protocol.stream_ack(
            stream_id, session_id, message_id, record.epoch, record.regenerates
        )
        earlier = await self._register(record, ack, per_user=not who.anonymous)
        if earlier is not None:  # the same client_message_id was sent before
            _admit(admit)
            _admit(repeated)
            return earlier
        # Registered: from here on a failure ends the stream, never leaves it held.
        stream = ActiveStream(
            record=record,
            request=ChatRequest(
                messages=[*history, ChatMessage("user", request.message)],
                model=request.model,
                system_prompt=request.system_prompt,
                temperature=request.temperature,
                # Never unbounded: the client's (at most the cap), else the cap.
                max_tokens=request.max_tokens or self.limits.max_tokens,
                reasoning_effort=request.reasoning_effort,
                thinking_budget=request.thinking_budget,
            ),
            chain=chain,
            feed=self._fanout.open(stream_id, session_id),
            started=time.monotonic(),
            clock=self.flusher.clock,
            provider=record.provider,
            model=record.model,
        )
        self.streams[stream_id] = stream  # its lease is kept from now on
        # A retried request with the same client_message_id stores the same
        # user message, so the history never holds it twice.
        user_id = derived_id("msg", session_id, cmid) if cmid else new_id("msg")
        user = Message(user_id, "user", request.message, now, client_message_id=cmid)
        try:
            if regenerate is None:  # a regenerate's user message is stored already
                await retrying(lambda: self._store.add_message(session_id, user))
            self._refuse_if_closing()
        except BaseException as exc:
            await self._abandon(stream, exc)
            raise
        _admit(admit)
        self.flusher.clock.start()
        stream.task = self._spawn(self._run(stream), f"stream {stream_id}")
        if self.hooks.on_start:
            self.hooks.on_start(record)
        return ack

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise ChatsockError(
                "server_shutdown", "the server is shutting down; retry shortly", retryable=True
            )

    async def _register(
        self, record: StreamRecord, ack: protocol.Payload, *, per_user: bool
    ) -> protocol.Payload | None:
        """Register `record` atomically; the earlier ack of a repeated client_message_id,
        or None when registered. too_many_streams when the session is full."""
        limit = self._settings.limits.max_streams_per_session
        user_limit = self._settings.limits.max_streams_per_user if per_user else 2**31

        async def register() -> protocol.Payload | None:
            try:
                done = await retrying(
                    lambda: self._store.register_stream(
                        record, limit=limit, lease_s=self._lease_s, ack=ack, user_limit=user_limit
                    )
                )
            except (StoreUnavailable, asyncio.CancelledError):
                # It may have landed with its reply lost (or this request was cancelled
                # meanwhile): undo it once the store answers, so it holds neither the
                # slot nor the id.
                self.ends.unknown_start(record, self._failed_start_terminal(record))
                raise
            if done.accepted:
                return None
            if done.earlier is not None:
                earlier_id = str(done.earlier.get("stream_id"))
                if earlier_id in self.ends.pending:
                    # That earlier start failed here and still holds the id: release
                    # it now (the store answers again) and register this one.
                    await self.ends.settle_now(earlier_id)
                    return await register()
                return done.earlier
            if done.full == "user":
                raise ChatsockError(
                    "too_many_streams",
                    f"you already have {user_limit} active stream(s) "
                    "(limits.max_streams_per_user); stop one or wait for it to finish",
                )
            raise ChatsockError(
                "too_many_streams",
                f"session {record.session_id} already has {limit} active stream(s); "
                "stop it or wait for it to finish",
            )

        try:
            return await register()
        except ChatsockError as exc:
            if exc.code != "too_many_streams":
                raise
        # Full: free slots held by ended streams or dead owners, then try once more.
        await self._reap(record.session_id, record.user)
        return await register()

    async def _history(
        self,
        request: ChatStreamRequest,
        session_id: str,
        *,
        stored: bool,
        regenerate: Regenerate | None = None,
    ) -> list[ChatMessage]:
        limit = self._settings.limits.max_history_messages
        if request.history is not None:
            return [ChatMessage(item.role, item.content) for item in request.history]
        if not stored:
            return []
        # A regenerate's: those before the user message it answers (never the reply).
        messages = (
            regenerate.before
            if regenerate is not None
            else await self._store.get_messages(session_id)
        )
        # An assistant turn goes back with its provider's signed reasoning blocks.
        usable = [
            ChatMessage(m.role, m.content, tuple(m.signed or ())) for m in messages if m.content
        ]
        if not limit:
            return []
        # The stored history is bounded like a client's: what is left of the
        # prompt budget after the message and the system prompt.
        budget = self.limits.max_prompt_chars - prompt_chars(request)
        return trim_history(usable[-limit:], budget)

    async def _reap(self, session_id: str, user: str | None) -> None:
        """Free the slots of a session and of its user held by streams that ended or
        whose owner died (`active_streams` prunes the former; `owner_lost` records
        the latter)."""
        found = await self._store.active_streams(session_id)
        found += await self._store.active_streams(user=user or ANONYMOUS_USER)
        for other in {record.stream_id: record for record in found}.values():
            if other.stream_id in self.ends.pending:
                # Ended here while the store was away; it answers again: record it now.
                await self.ends.settle_now(other.stream_id)
                continue
            await owner_lost(self._store, other, local=self.owns(other.stream_id))

    async def _abandon(self, stream: ActiveStream, cause: BaseException) -> None:
        """A registered stream whose start failed: end it before it ran, so its slot,
        its client_message_id and anyone admitted as a follower are not left waiting."""
        record = stream.record
        shutdown = isinstance(cause, ChatsockError) and cause.code == "server_shutdown"
        if shutdown or isinstance(cause, asyncio.CancelledError):
            stream.life.end(EndReason.SHUTDOWN)
        else:
            detail = str(cause) if isinstance(cause, StoreUnavailable) else type(cause).__name__
            log.warning("stream %s: start failed after registration: %s", record.stream_id, detail)
            stream.life.end(
                EndReason.STORE_UNAVAILABLE,
                ChatsockError(
                    "store_unavailable", f"starting the stream failed: {detail}", retryable=True
                ),
            )
        _, terminal = outcome(stream, "")
        try:
            await self.ends.abandoned(record, terminal)  # its lease is kept meanwhile
        finally:
            self.streams.pop(record.stream_id, None)
        stream.life.close()
        await self._fanout.end(stream.feed, terminal)

    @staticmethod
    def _failed_start_terminal(record: StreamRecord) -> Terminal:
        return error_terminal(
            record,
            "store_unavailable",
            "the stream could not be started: the store did not answer",
            "",
            retryable=True,
        )

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap_task)
        return task

    def _reap_task(self, task: asyncio.Task[Any]) -> None:
        """Forget a finished task. A reader's provider failure is already the
        stream's end reason; anything else is a bug, logged here, never lost."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, ChatsockError | ProviderError):
            log.error("task %s failed", task.get_name(), exc_info=exc)

    # -- stopping -----------------------------------------------------------
    async def stop(self, stream_id: str) -> bool:
        """Stop a stream this worker owns. False when it is not running here or its
        end was already decided (the provider finished: the reply is complete)."""
        stream = self.streams.get(stream_id)
        return stream is not None and self._stop(stream)

    def _stop(self, stream: ActiveStream) -> bool:
        """End `stream` as stopped, unless the provider already sent its finish
        reason: then only the tail of its reply stream (usage, EOF) is left, and the
        reply is complete, not stopped."""
        if stream.finish_reason is not None:
            self._end(stream, EndReason.COMPLETE)
            return False
        return self._end(stream, EndReason.STOPPED)

    async def stop_for_ack(self, stream_id: str) -> bool:
        """Stop a stream this worker owns and answer how it really ended: True only
        when its recorded end (else the end it sent) is stopped. A stop decided here
        can still end otherwise: the final flush could not be logged
        (store_unavailable), or another worker took the stream for lost. Waits for
        the end at most STOP_ACK_WAIT_S (it takes milliseconds unless the store is
        failing); past that the decision stands."""
        stream = self.streams.get(stream_id)
        if stream is None or not self._stop(stream):
            return False
        await self._until_finished(stream, STOP_ACK_WAIT_S)
        if self.streams.get(stream_id) is stream:
            return stream.life.reason is EndReason.STOPPED  # still finishing
        try:
            terminal = await self._store.get_terminal(stream_id)
        except StoreUnavailable:
            terminal = None
        if terminal is None and stream_id in self.ends.pending:
            terminal = self.ends.pending[stream_id].terminal  # owed to the store
        if terminal is None:
            return stream.life.reason is EndReason.STOPPED
        return terminal.status == "stopped"

    async def _until_finished(self, stream: ActiveStream, within: float) -> None:
        """Wait (at most `within`) until `stream` has sent its end and left the registry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.streams.get(stream.record.stream_id) is stream and loop.time() < deadline:
            if stream.task is not None:
                # asyncio.wait: cancelling this waiter never cancels the stream.
                await asyncio.wait({stream.task}, timeout=deadline - loop.time())
                return
            await asyncio.sleep(END_POLL_S)  # stopped before its task was spawned

    def _end(
        self, stream: ActiveStream, reason: EndReason, failure: ChatsockError | None = None
    ) -> bool:
        """Decide how `stream` ends (once) and wake it to finish."""
        if not stream.life.end(reason, failure):
            return False
        if stream.reader is not None:
            stream.reader.cancel()
        stream.wake()
        return True

    def _undelivered(self, stream: ActiveStream, exc: StoreUnavailable) -> None:
        """The token log could not be written: end with store_unavailable and the
        text logged so far, and stop reading the provider."""
        log.warning("stream %s: the token log cannot be written: %s", stream.record.stream_id, exc)
        stream.life.undelivered(
            ChatsockError(
                "store_unavailable", "the store is unavailable; retry shortly", retryable=True
            )
        )
        stream.discard()
        if stream.reader is not None:
            stream.reader.cancel()
        stream.wake()

    def refuse_new(self) -> None:
        """Draining: every new stream is refused with `server_shutdown` (retryable);
        the running ones go on."""
        self._closing = True

    async def idle(self) -> None:
        """Return once no stream runs here (the caller bounds the wait)."""
        while self.streams:
            # A snapshot: streams end (and, until refuse_new, start) during the wait.
            tasks = {s.task for s in self.streams.values() if s.task is not None}
            if tasks:
                await asyncio.wait(tasks)
            else:  # registered, its task not spawned yet
                await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        """End every open stream with `server_shutdown`, persist them, and await all tasks
        for up to `shutdown_grace_s` in all (then cancel what is left).

        A stream whose provider already finished ends as complete."""
        self._closing = True
        for stream in list(self.streams.values()):
            # A provider that sent its finish reason gave the whole reply.
            done = stream.finish_reason is not None
            self._end(stream, EndReason.COMPLETE if done else EndReason.SHUTDOWN)
        if self._tasks:
            grace = self._settings.server.shutdown_grace_s
            # Most of the grace for ending well, the rest for the cancelled to unwind.
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace * 0.8)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=max(grace * 0.2, 0.1))
        if self.ends.pending:
            try:
                await self.ends.retry_pending()
            except Exception:
                log.exception("recording pending ends at shutdown failed")
        for stream_id in self.ends.pending:
            log.warning("stream %s: its end is not recorded; another worker will", stream_id)
        await self.flusher.clock.close()

    async def maintain(self) -> None:
        """Run until cancelled: keep every owned stream's lease, record, slot and log
        alive for as long as it runs, honour stop flags (the backup for a missed
        stop signal), and record streams whose owner died as lost."""
        loop = asyncio.get_running_loop()
        last_reap = last_sweep = loop.time()
        while True:
            await asyncio.sleep(UPKEEP_S)
            if loop.time() - last_sweep >= SWEEP_S:
                last_sweep = loop.time()
                self._store.forget_expired()
            try:
                await self._keep_alive()
                if self._store.shared and loop.time() - last_reap >= self._lease_s:
                    last_reap = loop.time()
                    await self._reap_lapsed()
            except StoreUnavailable as exc:
                log.warning("stream upkeep: %s", exc)

    async def _keep_alive(self) -> None:
        # A snapshot: streams come and go during the await. Streams whose end the
        # store still owes keep their lease, so nobody takes them for lost.
        records = [s.record for s in self.streams.values()] + self.ends.pending_records()
        if not records:
            return
        stopped = await self._store.keep_streams_alive(records, self.worker_id, self._lease_s)
        try:
            self._honour_stops(stopped)
        finally:
            if self.ends.pending:
                await self.ends.retry_pending()

    def _honour_stops(self, stopped: set[str]) -> None:
        for stream_id in stopped:
            stream = self.streams.get(stream_id)
            if stream is not None and self._stop(stream):
                log.info("stream %s: stop flag seen", stream_id)

    async def _reap_lapsed(self) -> None:
        for record in await self._store.lapsed_streams():
            if not self.owns(record.stream_id):
                await owner_lost(self._store, record, local=False)

    # -- the stream task ----------------------------------------------------
    async def _run(self, stream: ActiveStream) -> None:
        record = stream.record
        bind_stream(record.stream_id, record.session_id)  # named in every JSON log line
        try:
            start = protocol.stream_start(
                record.stream_id,
                record.session_id,
                record.message_id,
                stream.provider,
                stream.model,
                record.regenerates,
            )
            await self._fanout.emit(stream.feed, protocol.STREAM_START, start)
            if stream.life.begin():  # False: stopped before it ran
                stream.reader = self._spawn(
                    read_chain(stream, self._max_chars, self.hooks), f"reader {record.stream_id}"
                )
                bus = self.bus
                if bus is not None:
                    await retrying(lambda: bus.started(record.to_dict(), start))
                await self._pump(stream)
                # The reader is done or cancelled; closing the upstream may take a
                # moment, but a hung close must not hold the end back.
                await asyncio.wait({stream.reader}, timeout=READER_CLOSE_S)
        except asyncio.CancelledError:
            # Hard cancel (shutdown grace exceeded): record the end below, then propagate.
            self._end(stream, EndReason.SHUTDOWN)
            raise
        except StoreUnavailable as exc:
            log.error("stream %s: the store stayed unreachable: %s", record.stream_id, exc)
            self._undelivered(stream, exc)
        except Exception as exc:
            log.exception("stream %s: flush failed", record.stream_id)
            failure = ChatsockError("internal", f"streaming failed: {type(exc).__name__}")
            self._end(stream, EndReason.INTERNAL, failure)
        finally:
            if stream.reader is not None and not stream.reader.done():
                stream.reader.cancel()
            await self._finish(stream)

    async def _pump(self, stream: ActiveStream) -> None:
        """Wait until the stream stops streaming; the flush clock sends its text."""
        while stream.life.streaming:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            stream.waiter = waiter
            try:
                await waiter
            finally:
                stream.waiter = None

    # -- the end ------------------------------------------------------------
    async def _finish(self, stream: ActiveStream) -> None:
        """Persist, record and send the end; whatever fails, followers get a terminal
        event and the stream leaves the registry."""
        record = stream.record
        stream.life.end(EndReason.INTERNAL)  # no-op unless nothing decided the end
        try:
            terminal: Terminal | None = None
            try:
                terminal = await self._settle(stream)
            except asyncio.CancelledError:
                # Hard-cancelled at shutdown mid-finish: the followers still get the
                # end, and what the store owes is kept for the last retry. Text still
                # buffered was never sent: the reply is not complete.
                if stream.pending:
                    stream.discard()
                    stream.life.undelivered(
                        ChatsockError(
                            "server_shutdown",
                            "the server shut down before the reply was delivered",
                            retryable=True,
                        )
                    )
                _, terminal = outcome(stream, "".join(stream.parts))
                self.ends.keep_unrecorded(stream, terminal)
                await self._fanout.end(stream.feed, terminal)
                raise
            except Exception:
                log.exception("stream %s: finishing failed", record.stream_id)
            if terminal is None:
                _, terminal = outcome(stream, "".join(stream.parts))
                await self.ends.abandoned(record, terminal)  # frees the slot
            await self._fanout.end(stream.feed, terminal)
            await self._charge(stream)
            if self.hooks.on_end:
                code = terminal.payload.get("code", terminal.status)
                self.hooks.on_end(record, str(code), time.monotonic() - stream.started)
        except Exception:
            log.exception("stream %s: sending its end failed", record.stream_id)
        finally:
            self.streams.pop(record.stream_id, None)
            stream.life.close()

    async def _charge(self, stream: ActiveStream) -> None:
        """Count the reply's output tokens against its user's daily budget: the
        provider's usage (reasoning included), else an estimate of one token per 4
        characters of text and reasoning."""
        user = stream.record.user
        if self.charge is None or user is None or user == ANONYMOUS_USER:
            return
        usage = stream.usage.output_tokens if stream.usage is not None else None
        # Reasoning is output too: a model that thinks spends its user's budget.
        chars = sum(map(len, stream.parts)) + sum(map(len, stream.reasoning_parts))
        spent = usage if usage is not None else -(-chars // 4)
        try:
            await self.charge(user, spent)
        except StoreUnavailable as exc:
            log.warning("stream %s: its tokens were not counted: %s", stream.record.stream_id, exc)

    async def _settle(self, stream: ActiveStream) -> Terminal:
        # Claim the end first: another worker may have taken this stream for
        # lost (our lease lapsed during a Redis outage). Only the claimant
        # persists the reply and records the end, so it is stored once.
        await self.flusher.settled(stream)  # a tick's flush completes first, as it was sent
        claim = await claim_end(self._store, stream.record.stream_id, self.worker_id)
        if claim is Claim.TAKEN:
            stream.discard()  # the recorded partial is what the log holds
            return await self.ends.relay(stream)
        if stream.pending and stream.life.reason is not EndReason.STORE_UNAVAILABLE:
            try:
                await self.flusher.final(stream)
            except StoreUnavailable as exc:
                log.error("stream %s: the final flush failed: %s", stream.record.stream_id, exc)
                self._undelivered(stream, exc)
            except Exception:
                log.exception("stream %s: final flush failed", stream.record.stream_id)
                stream.discard()
        return await self.ends.record(stream, claim)
