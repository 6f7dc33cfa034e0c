"""The recorder of this worker's stream ends: persist the reply, record the end, and
keep retrying whatever the store could not take.

The followers of a stream get its terminal event as soon as the end is known,
even while the store is away. What must also reach the store (the assistant
message, the recorded end that frees the session's slot, the release of a
failed start's `client_message_id`) is written at once when it can be, and
otherwise kept as a *pending end* that the upkeep loop retries until it lands.
Meanwhile the stream's lease is kept alive, so no other worker takes it for
lost and records a different end. Every write here is idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chatsock import protocol
from chatsock.ending import Claim, ended_elsewhere
from chatsock.outcome import outcome
from chatsock.retry import retrying
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import Message, MessageStatus, StreamRecord, Terminal
from chatsock.stream import ActiveStream

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PendingEnd:
    """What the store still owes for one ended stream."""

    record: StreamRecord
    terminal: Terminal
    message: Message | None  # the reply to persist, if not stored yet
    release_cmid: bool  # a failed start's client_message_id must be released


def _reply(stream: ActiveStream, status: MessageStatus, terminal: Terminal) -> Message:
    """The assistant message that stores a stream's reply and how it ended."""
    record = stream.record
    return Message(
        record.message_id,
        "assistant",
        "".join(stream.parts),
        protocol.now_iso(),
        status=status,
        stream_id=record.stream_id,
        provider=stream.provider,
        model=stream.model,
        error_code=terminal.payload.get("code") if status == "error" else None,
        reasoning="".join(stream.reasoning_parts) or None,
        signed=[dict(block) for block in stream.signed] or None,
    )


class EndRecorder:
    """Persists and records the ends of the streams this worker owns."""

    def __init__(self, store: Store, worker_id: str) -> None:
        self._store = store
        self._worker_id = worker_id
        self.pending: dict[str, PendingEnd] = {}

    # -- ends decided by the owner ---------------------------------------------
    async def record(self, stream: ActiveStream, claim: Claim) -> Terminal:
        """The terminal of a stream this worker ends (claim OWN or UNREACHABLE):
        persist the reply and record the end now, or keep them pending."""
        record = stream.record
        status, terminal = outcome(stream, "".join(stream.parts))
        message = _reply(stream, status, terminal)
        persisted = claim is Claim.OWN and await self._persist(record, message)
        if terminal.event == protocol.COMPLETE:
            terminal.payload["persist_failed"] = not persisted
        recorded = claim is Claim.OWN and await self._finish(record, terminal)
        if not (persisted and recorded):
            self._keep(PendingEnd(record, terminal, None if persisted else message, False))
        return terminal

    async def relay(self, stream: ActiveStream) -> Terminal:
        """The end recorded by the worker that took this stream for lost."""
        record = stream.record
        recorded = await ended_elsewhere(self._store, record.stream_id)
        if recorded is not None:
            return recorded
        # The claimant never recorded an end (it failed too): record ours so the
        # session's slot is freed. It persists nothing (the claimant may have),
        # and says so.
        log.warning("stream %s: its end was claimed but never recorded", record.stream_id)
        _, terminal = outcome(stream, "".join(stream.parts))
        if terminal.event == protocol.COMPLETE:
            terminal.payload["persist_failed"] = True
        if not await self._finish(record, terminal):
            self._keep(PendingEnd(record, terminal, None, False))
        return terminal

    async def abandoned(self, record: StreamRecord, terminal: Terminal) -> None:
        """A stream whose start failed after registration: release its
        client_message_id (a retry must start afresh) and record its end."""
        end = PendingEnd(record, terminal, None, record.client_message_id is not None)
        self._keep(end)  # first, so a cancellation here still leaves it owed
        try:
            await retrying(lambda: self._settle(end))
        except StoreUnavailable as exc:
            log.warning(
                "stream %s: its failed start is not recorded yet: %s", record.stream_id, exc
            )
            return
        if self.pending.get(record.stream_id) is end:
            del self.pending[record.stream_id]

    def keep_unrecorded(self, stream: ActiveStream, terminal: Terminal) -> None:
        """An end that could not be written (its task was cancelled): keep it all."""
        status: MessageStatus = "error" if terminal.status == "streaming" else terminal.status
        message = _reply(stream, status, terminal)
        self._keep(PendingEnd(stream.record, terminal, message, False))

    def unknown_start(self, record: StreamRecord, terminal: Terminal) -> None:
        """A registration whose outcome is unknown (the store stopped answering):
        if it landed, undo it later like a failed start. Undoing one that never
        landed writes nothing that lasts beyond the log TTL."""
        self._keep(PendingEnd(record, terminal, None, record.client_message_id is not None))

    # -- what the store still owes ---------------------------------------------
    def pending_records(self) -> list[StreamRecord]:
        return [end.record for end in self.pending.values()]

    async def retry_pending(self) -> None:
        """Write what the store still owes, oldest first; stop at the first outage."""
        for stream_id, end in list(self.pending.items()):
            try:
                await self._settle(end)
            except StoreUnavailable as exc:
                log.info("pending ends: the store is still away (%s)", exc)
                return
            except Exception:
                log.exception("stream %s: recording its pending end failed", stream_id)
                continue
            if self.pending.get(stream_id) is end:
                del self.pending[stream_id]
                log.info("stream %s: its pending end is recorded", stream_id)

    async def settle_now(self, stream_id: str) -> bool:
        """Record a pending end at once (a retry needs its client_message_id)."""
        end = self.pending.get(stream_id)
        if end is None:
            return False
        await retrying(lambda: self._settle(end))
        if self.pending.get(stream_id) is end:
            del self.pending[stream_id]
        return True

    def _keep(self, end: PendingEnd) -> None:
        self.pending[end.record.stream_id] = end

    async def _settle(self, end: PendingEnd) -> None:
        """One idempotent attempt at everything `end` still owes."""
        record = end.record
        if await self._store.get_stream(record.stream_id) is None:
            return  # deleted with its session, or never registered: nothing is owed
        if not await self._store.claim_end(record.stream_id, self._worker_id):
            end.message = None  # another worker took it for lost and stores its own reply
        if end.message is not None:
            await self._store.add_message(record.session_id, end.message)
            end.message = None
            if end.terminal.event == protocol.COMPLETE:
                end.terminal.payload["persist_failed"] = False
        cmid = record.client_message_id
        if end.release_cmid and cmid is not None:
            await self._store.release_client_message(record.session_id, cmid, record.stream_id)
            end.release_cmid = False
        await self._store.finish_stream(record, end.terminal)

    async def _persist(self, record: StreamRecord, message: Message) -> bool:
        try:
            # add_message is idempotent by message id: a retry never stores it twice.
            await retrying(lambda: self._store.add_message(record.session_id, message))
            return True
        except StoreUnavailable as exc:
            log.warning("stream %s: persisting the reply failed: %s", record.stream_id, exc)
            return False

    async def _finish(self, record: StreamRecord, terminal: Terminal) -> bool:
        try:
            await retrying(lambda: self._store.finish_stream(record, terminal))
            return True
        except StoreUnavailable as exc:
            log.warning("stream %s: could not record its end: %s", record.stream_id, exc)
            return False
