"""Following, on this worker, a stream that another worker generates.

The owner sends each flush to its own room members directly and appends it
to the stream's Redis log; a worker whose clients follow the stream tails
that log and sends the entries to its local members. No token is published
to every worker. A tailer also notices the end (the stored terminal event)
and the owner's death (its lease expired): then ending.py records the stream
as `worker_lost` with the text the log holds.

A tailer that keeps failing, or finds the log missing entries, never leaves
its followers waiting: it ends the feed on this worker alone with a
`chat_stream_error` (the stream's own end is not recorded), and the clients
resume elsewhere or reload.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from chatsock import protocol
from chatsock.ending import declare_lost
from chatsock.errors import ChatsockError, stream_lost
from chatsock.fanout import Fanout, Feed, count_kinds, log_unavailable
from chatsock.outcome import error_terminal
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import LogEntry, StreamRecord, Terminal
from chatsock.timing import TAIL_IDLE_FOLLOWERLESS_S, TAIL_MAX_FAILURES, TAIL_POLL_MS

log = logging.getLogger(__name__)

# A session delete hands each stream's end and whole log to the workers still
# relaying it (the delete removes them from the store), keyed by stream id.
Ends = dict[str, tuple[Terminal, list[LogEntry]]]
# How long a delete waits for this worker's tails to relay what they were handed.
HAND_OVER_WAIT_S = 2.0


def encode_ends(ends: Ends) -> dict[str, Any]:
    """`ends` as JSON for the other workers."""
    return {
        stream_id: {
            "status": terminal.status,
            "event": terminal.event,
            "payload": terminal.payload,
            "entries": [[entry.seq, entry.payload] for entry in entries],
        }
        for stream_id, (terminal, entries) in ends.items()
    }


def decode_ends(data: dict[str, Any]) -> Ends:
    return {
        str(stream_id): (
            Terminal(end["status"], end["event"], end["payload"]),
            [LogEntry(int(seq), payload) for seq, payload in end["entries"]],
        )
        for stream_id, end in data.items()
    }


class _Tail:
    """One tailer's progress: the feed it fills and the text it has sent."""

    def __init__(self, feed: Feed, record: StreamRecord, start: dict[str, Any] | None) -> None:
        self.feed = feed
        self.record = record
        self.start = start  # chat_stream_start, until it is sent
        self.start_at = feed.last_seq
        # The text of seq 1..start_at, read at the first step: a log the store loses
        # later cannot give it any more.
        self.head: str | None = None if self.start_at else ""
        self.texts: list[str] = []
        # The end and whole log a session delete handed over (see `hand_over`).
        self.handed: tuple[Terminal, list[LogEntry]] | None = None
        self.was_handed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None  # the task that runs it


class Tailers:
    """Owns one tail task per stream followed here but running elsewhere."""

    def __init__(self, store: Store, fanout: Fanout, *, is_local: Any) -> None:
        self.store = store
        self.fanout = fanout
        self._is_local = is_local
        self.tails: dict[str, _Tail] = {}

    @property
    def tasks(self) -> dict[str, asyncio.Task[None]]:
        """The running tail task of each stream tailed here."""
        return {stream_id: t.task for stream_id, t in self.tails.items() if t.task is not None}

    def ensure(
        self, record: StreamRecord, start_at: int, start: dict[str, Any] | None = None
    ) -> Feed | None:
        """The live feed of `record` on this worker, starting a tailer if needed."""
        feed = self.fanout.feeds.get(record.stream_id)
        if feed is not None or self._is_local(record.stream_id):
            return feed
        if self.fanout.has_ended(record.stream_id):
            return None  # its end reached this worker's followers already (a stale record)
        feed = self.fanout.open(record.stream_id, record.session_id, start_at)
        tail = self.tails[record.stream_id] = _Tail(feed, record, start)
        task = asyncio.get_running_loop().create_task(
            self._tail(tail), name=f"tail {record.stream_id}"
        )
        tail.task = task
        task.add_done_callback(functools.partial(self._done, record.stream_id))
        return feed

    def _done(self, stream_id: str, task: asyncio.Task[None]) -> None:
        # A newer tailer may follow the same stream by now: it is not ours to drop.
        tail = self.tails.get(stream_id)
        if tail is not None and tail.task is task:
            del self.tails[stream_id]

    async def hand_over(self, ends: Ends, within: float = HAND_OVER_WAIT_S) -> None:
        """A session delete removes these ended streams from the store: each tail
        here relays the rest of the log and the end it is handed instead, before
        the session's followers hear of the delete (wait at most `within`)."""
        waiting = []
        for stream_id, end in ends.items():
            tail = self.tails.get(stream_id)
            task = tail.task if tail is not None else None
            if tail is None or task is None or tail.feed.ended.is_set():
                continue
            tail.handed = end
            tail.was_handed.set()
            waiting.append(task)
        if waiting:
            await asyncio.wait(waiting, timeout=within)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _followed(self, feed: Feed) -> bool:
        return bool(feed.listeners or feed.catching_up or self.fanout.room_size(feed.session_id))

    async def _tail(self, tail: _Tail) -> None:
        feed, stream_id = tail.feed, tail.record.stream_id
        loop = asyncio.get_running_loop()
        unfollowed_since: float | None = None
        failures = 0
        try:
            while True:
                try:
                    if await self._step(tail):
                        return
                    failures = 0
                except StoreUnavailable as exc:
                    log.warning("tailing %s: %s; retrying", stream_id, exc)
                    await asyncio.sleep(2 * TAIL_POLL_MS / 1000)
                    continue
                except ChatsockError as exc:  # the store lost entries: nothing to resume
                    if tail.handed is not None:  # deleted with its session meanwhile
                        await self._hand(tail)
                        return
                    log.warning("tailing %s: %s", stream_id, exc.message)
                    await self._end_here(tail, exc.code, exc.message, retryable=False)
                    return
                except Exception:
                    failures += 1
                    log.exception(
                        "tailing %s failed (%d of %d)", stream_id, failures, TAIL_MAX_FAILURES
                    )
                    if failures >= TAIL_MAX_FAILURES:
                        message = "this worker lost track of the stream; resume it to follow it"
                        await self._end_here(tail, "internal", message, retryable=True)
                        return
                    await asyncio.sleep(failures * TAIL_POLL_MS / 1000)
                    continue
                if self._followed(feed):
                    unfollowed_since = None
                elif unfollowed_since is None:
                    unfollowed_since = loop.time()
                elif loop.time() - unfollowed_since > TAIL_IDLE_FOLLOWERLESS_S:
                    return
        finally:
            if self.fanout.feeds.get(stream_id) is feed:
                del self.fanout.feeds[stream_id]

    async def _step(self, tail: _Tail) -> bool:
        """Relay what the log holds now (waiting up to a poll); True once the stream ended."""
        store, record = self.store, tail.record
        if tail.handed is not None:
            return await self._hand(tail)
        if tail.start is not None:
            await self.fanout.emit(tail.feed, protocol.STREAM_START, tail.start)
            tail.start = None
        if tail.head is None:
            tail.head = await self._head(tail)
        entries = await store.wait_tokens(record.stream_id, tail.feed.last_seq, TAIL_POLL_MS)
        if tail.handed is not None:
            return await self._hand(tail)
        if entries:
            await self._relay(tail, entries)
            return False
        terminal = await store.get_terminal(record.stream_id)
        if terminal is None and not await store.lease_alive(record.stream_id):
            if await store.get_stream(record.stream_id) is None:
                if await self._deleted(tail):
                    return await self._hand(tail)
                # The store lost the stream (a failover, a flush), not its owner: its
                # log cannot give a partial, so this worker ends its feed alone.
                raise stream_lost(record.stream_id)
            terminal = await declare_lost(store, record)
        if terminal is None:
            return False
        await self._relay(tail, await store.read_tokens(record.stream_id, tail.feed.last_seq))
        if terminal.payload.get("code") == "stream_lost":
            partial = await self._sent_text(tail)
            if partial != terminal.payload.get("partial"):
                # The store lost entries this worker had not relayed yet: its followers
                # are told what they got, never a partial their tokens do not spell.
                message = str(terminal.payload.get("error", ""))
                await self._end_here(tail, "stream_lost", message, retryable=False)
                return True
        await self.fanout.end(tail.feed, terminal)
        return True

    async def _deleted(self, tail: _Tail) -> bool:
        """Whether the stream is gone because its session was deleted, and the
        delete handed its end over (it may reach this worker just after the store
        showed the stream gone)."""
        if tail.handed is None and await self.store.get_session(tail.record.session_id) is None:
            try:
                async with asyncio.timeout(HAND_OVER_WAIT_S):
                    await tail.was_handed.wait()
            except TimeoutError:
                pass
        return tail.handed is not None

    async def _hand(self, tail: _Tail) -> bool:
        """Relay the rest of the log and the end a session delete handed over."""
        assert tail.handed is not None
        terminal, entries = tail.handed
        if tail.start is not None:
            await self.fanout.emit(tail.feed, protocol.STREAM_START, tail.start)
            tail.start = None
        await self._relay(tail, entries)
        await self.fanout.end(tail.feed, terminal)
        return True

    async def _relay(self, tail: _Tail, entries: list[LogEntry]) -> None:
        feed = tail.feed
        for entry in entries:
            if entry.seq <= feed.last_seq:
                continue
            if entry.seq != feed.last_seq + 1:
                raise log_unavailable(feed.stream_id, feed.last_seq + 1, entry.seq - 1)
            await self.fanout.emit_entry(feed, entry.seq, entry.payload)
            tail.texts.append(str(entry.payload.get("token", "")))

    async def _end_here(self, tail: _Tail, code: str, message: str, *, retryable: bool) -> None:
        """End the feed on this worker only, with the text its followers were sent."""
        partial = await self._sent_text(tail)
        terminal = error_terminal(tail.record, code, message, partial, retryable=retryable)
        await self.fanout.end(tail.feed, terminal, recorded=False)

    async def _head(self, tail: _Tail) -> str:
        """The text of the log's first `start_at` entries; the feed learns the seqs
        of its last `chat_token` and `chat_reasoning` there (a join reports them)."""
        entries = await self.store.read_tokens(tail.record.stream_id, 0, tail.start_at)
        feed = tail.feed
        if feed.last_seq == tail.start_at:  # nothing relayed yet
            feed.text_seq, feed.reasoning_seq = count_kinds(entries)
            feed.counted = True
        return "".join(str(e.payload.get("token", "")) for e in entries)

    async def _sent_text(self, tail: _Tail) -> str:
        """The text of seq 1..the feed's last: the log's start, then what this tailer sent."""
        head = tail.head or ""
        if tail.head is None:
            try:
                head = await self._head(tail)
            except Exception:
                log.exception("tailing %s: cannot read its start", tail.record.stream_id)
        return head + "".join(tail.texts)
