"""Following, on this worker, a stream that another worker generates.

The owner sends each flush to its own room members directly and appends it
to the stream's Redis log; a worker whose clients follow the stream tails
that log and sends the entries to its local members. No token is published
to every worker. A tailer also notices the end (the stored terminal event)
and the owner's death (its lease expired): then it records the stream as
`worker_lost` with the text the log holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from chatsock import protocol
from chatsock.fanout import Fanout, Feed
from chatsock.ids import new_id
from chatsock.retry import retrying
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import Message, StreamRecord, Terminal

log = logging.getLogger(__name__)

POLL_MS = 250
IDLE_FOLLOWERLESS_S = 5.0
# How long a worker that lost the claim on a stream's end waits for the
# winner to record it: the winner's store writes retry for 3 s.
END_WAIT_S = 5.0
END_POLL_S = 0.02


class Tailers:
    """Owns one tail task per stream followed here but running elsewhere."""

    def __init__(self, store: Store, fanout: Fanout, *, is_local: Any) -> None:
        self.store = store
        self.fanout = fanout
        self._is_local = is_local
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def ensure(
        self, record: StreamRecord, start_at: int, start: dict[str, Any] | None = None
    ) -> Feed | None:
        """The live feed of `record` on this worker, starting a tailer if needed."""
        feed = self.fanout.feeds.get(record.stream_id)
        if feed is not None or self._is_local(record.stream_id):
            return feed
        feed = self.fanout.open(record.stream_id, record.session_id, start_at)
        task = asyncio.get_running_loop().create_task(
            self._tail(feed, record, start), name=f"tail {record.stream_id}"
        )
        self.tasks[record.stream_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(record.stream_id, None))
        return feed

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    def _followed(self, feed: Feed) -> bool:
        return bool(feed.listeners or feed.catching_up or self.fanout.room_size(feed.session_id))

    async def _tail(self, feed: Feed, record: StreamRecord, start: dict[str, Any] | None) -> None:
        loop = asyncio.get_running_loop()
        unfollowed_since: float | None = None
        try:
            if start is not None:
                await self.fanout.emit(feed, protocol.STREAM_START, start)
            while True:
                try:
                    entries = await self.store.wait_tokens(record.stream_id, feed.last_seq, POLL_MS)
                    for entry in entries:
                        if entry.seq > feed.last_seq:
                            await self.fanout.emit(feed, protocol.TOKEN, entry.payload, entry.seq)
                    if entries:
                        continue
                    terminal = await self.store.get_terminal(record.stream_id)
                    if terminal is None and not await self.store.lease_alive(record.stream_id):
                        terminal = await declare_lost(self.store, record)
                    if terminal is not None:
                        for entry in await self.store.read_tokens(record.stream_id, feed.last_seq):
                            await self.fanout.emit(feed, protocol.TOKEN, entry.payload, entry.seq)
                        await self.fanout.end(feed, terminal)
                        return
                except StoreUnavailable as exc:
                    log.warning("tailing %s: %s; retrying", record.stream_id, exc)
                    await asyncio.sleep(0.5)
                    continue
                if self._followed(feed):
                    unfollowed_since = None
                elif unfollowed_since is None:
                    unfollowed_since = loop.time()
                elif loop.time() - unfollowed_since > IDLE_FOLLOWERLESS_S:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tailing %s failed", record.stream_id)
        finally:
            if self.fanout.feeds.get(record.stream_id) is feed:
                self.fanout.feeds.pop(record.stream_id, None)


async def owner_lost(store: Store, record: StreamRecord, *, local: bool) -> bool:
    """Whether `record` streams on another worker whose lease expired; if so it is
    recorded as `worker_lost` (see `declare_lost`)."""
    if local or record.status != "streaming" or await store.lease_alive(record.stream_id):
        return False
    await declare_lost(store, record)
    return True


async def declare_lost(store: Store, record: StreamRecord) -> Terminal:
    """Record a stream whose owner died: error `worker_lost` with the logged text.

    Several workers may notice at once, and an owner that was only cut off
    from Redis may be finishing it too: the one that claims the end persists
    the message and records it; the others return the end it recorded.
    """
    entries = await store.read_tokens(record.stream_id, 0)
    partial = "".join(str(entry.payload.get("token", "")) for entry in entries)
    payload = protocol.stream_error(
        stream_id=record.stream_id,
        session_id=record.session_id,
        code="worker_lost",
        error=f"the worker running this stream ({record.owner}) stopped responding",
        partial=partial,
        retryable=True,
    )
    terminal = Terminal("error", protocol.STREAM_ERROR, payload)
    claimant = new_id("lost")  # unique, so a retried claim is recognised as ours
    if not await retrying(lambda: store.claim_end(record.stream_id, claimant)):
        recorded = await ended_elsewhere(store, record.stream_id)
        if recorded is not None:
            return recorded
        # The claimant never recorded the end: record it (NX) to free the slot.
        await retrying(lambda: store.finish_stream(record, terminal))
        return await store.get_terminal(record.stream_id) or terminal
    log.warning("stream %s: owner %s lost; recording worker_lost", record.stream_id, record.owner)
    # If the owner was only cut off from Redis, it stops at its next flag check
    # and relays the end recorded here.
    await retrying(lambda: store.request_stop(record.stream_id))
    message = Message(
        record.message_id,
        "assistant",
        partial,
        protocol.now_iso(),
        status="error",
        stream_id=record.stream_id,
        provider=record.provider,
        model=record.model,
        error_code="worker_lost",
    )
    try:
        await retrying(lambda: store.add_message(record.session_id, message))
    except StoreUnavailable:
        log.exception("stream %s: could not store its partial reply", record.stream_id)
    await retrying(lambda: store.finish_stream(record, terminal))
    return terminal


async def ended_elsewhere(
    store: Store, stream_id: str, within: float = END_WAIT_S, *, until_owner_gone: bool = False
) -> Terminal | None:
    """The end recorded by whoever claimed it, once it is stored. None after
    `within`, or, with `until_owner_gone`, as soon as the owner's lease has
    lapsed: its worker is gone and will record nothing more."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            terminal = await store.get_terminal(stream_id)
            if terminal is None and until_owner_gone and not await store.lease_alive(stream_id):
                return None
        except StoreUnavailable:
            terminal = None
        if terminal is not None or loop.time() >= deadline:
            return terminal
        await asyncio.sleep(END_POLL_S)
