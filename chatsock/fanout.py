"""Delivers a stream's events to the followers on this worker, gap-free.

Live followers are the members of the session's Socket.IO room, plus direct
listeners (SSE responses). A follower that resumes from an older `seq` is
excluded from live delivery while it catches up from the token log; it is
attached to live delivery in the same event-loop step in which the catch-up
proves it has seen everything up to the feed's last seq, and never past it
(a seq already logged but not yet emitted reaches it live). Hence no gap
and no duplicate.

A socket that enters the room while streams run gets each of them live from
that moment on: `enter_room` records, for every feed of the session, the seq
after which it has had every token (`live_since`), and a later resume sends
it only what lies below. A log that no longer holds what a catch-up needs
(trimmed by `max_log_entries`, evicted) is an error, `log_unavailable`,
never a silent gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from chatsock import protocol
from chatsock.errors import ChatsockError
from chatsock.protocol import Payload
from chatsock.store import Store
from chatsock.store.models import LogEntry, StreamRecord, Terminal

log = logging.getLogger(__name__)

Send = Callable[[str, Payload], Awaitable[None]]

LOG_PAGE = 1000  # log entries per store read while catching up
# Ended feeds remembered, so that a socket resuming just after the end (a
# session_join, then chat_resume) gets neither a token nor the end twice.
ENDED_FEEDS_KEPT = 256
# How long session_join waits for this worker to finish relaying a stream the
# store has already seen end (a tailer polls every TAIL_POLL_MS).
JOIN_LAG_S = 2.0


class Listener:
    """A direct follower of one stream (an SSE response): events land on `queue`;
    `reasoning`: it opted in to `chat_reasoning` events."""

    def __init__(self, after: Cursor | None = None) -> None:
        self.queue: asyncio.Queue[tuple[str, Payload]] = asyncio.Queue()
        self.reasoning = after is not None and after.reasoning
        # Opted in: the last `chat_token` and `chat_reasoning` seqs it was sent
        # (its SSE event ids name both).
        self.marks = [after.after, after.after_reasoning] if self.reasoning and after else None

    async def send(self, event: str, payload: Payload) -> None:
        self.queue.put_nowait((event, payload))


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a follower resumes: after the `chat_token` seq `after` and, when it
    opted in to reasoning, after the `chat_reasoning` seq `after_reasoning`.

    Both kinds share one token log, whose position counts the entries of both,
    so an entry's position is at least its own seq. A follower has every entry
    up to `position` (the smaller of its seqs), which is where its catch-up
    starts reading; `event` picks what it lacks. (What it had need not be a
    prefix of the log: it may have followed the text alone, then opted in.)"""

    after: int = 0
    after_reasoning: int = 0
    reasoning: bool = False

    @property
    def position(self) -> int:
        return min(self.after, self.after_reasoning) if self.reasoning else self.after

    @property
    def furthest(self) -> int:
        """A log position the follower claims to have reached: the larger seq."""
        return max(self.after, self.after_reasoning) if self.reasoning else self.after

    def event(self, entry: Payload) -> str | None:
        """The event that sends this log entry to the follower; None: not for it."""
        if protocol.is_reasoning(entry):
            wanted = self.reasoning and entry["seq"] > self.after_reasoning
            return protocol.REASONING if wanted else None
        return protocol.TOKEN if entry["seq"] > self.after else None


@dataclass(eq=False)
class Feed:
    """One live stream as seen by this worker."""

    stream_id: str
    session_id: str
    last_seq: int = 0  # the position of the last log entry sent live
    terminal: Terminal | None = None
    # The seqs of the last `chat_token` and `chat_reasoning` sent live; not
    # `counted` yet for a feed a tailer opened midway (see `Fanout.seqs_at`).
    text_seq: int = 0
    reasoning_seq: int = 0
    counted: bool = True
    catching_up: set[str] = field(default_factory=set)
    listeners: set[Listener] = field(default_factory=set)
    # Sockets that entered the room after the feed opened: the seq after which
    # they have had every token (sockets without an entry: all of them).
    live_since: dict[str, int] = field(default_factory=dict)
    # Members that opted in to reasoning after they entered the room: the
    # position after which they have had its reasoning (before it, text only).
    reasoning_since: dict[str, int] = field(default_factory=dict)
    # Sockets that got the terminal event (live or at the end of a catch-up).
    finished: set[str] = field(default_factory=set)
    # Whether the terminal is the stream's recorded end, not a local give-up.
    end_recorded: bool = True
    # Room members being sent what they missed (a resume after session_join): they
    # get live tokens meanwhile, but the terminal only after their catch-up.
    backfilling: set[str] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def room(self) -> str:
        return protocol.session_room(self.session_id)

    def seqs_at(self, position: int) -> tuple[int, int]:
        """The `chat_token` and `chat_reasoning` seqs at a log position the feed
        passed: exact at its last, else a lower bound of each."""
        if position >= self.last_seq:
            return self.text_seq, self.reasoning_seq
        return max(0, position - self.reasoning_seq), max(0, position - self.text_seq)


def count_kinds(entries: list[LogEntry]) -> tuple[int, int]:
    """How many `chat_token` and `chat_reasoning` entries `entries` holds."""
    reasoning = sum(1 for e in entries if protocol.is_reasoning(e.payload))
    return len(entries) - reasoning, reasoning


def log_unavailable(stream_id: str, first: int, last: int | None = None) -> ChatsockError:
    """The error for a catch-up the token log can no longer serve."""
    span = f"seq {first}..{last}" if last is not None else f"seq {first} onwards"
    return ChatsockError(
        "log_unavailable",
        f"the stream's token log no longer holds {span} of stream {stream_id}; reload the session",
    )


async def _ended(feeds: list[Feed], within: float) -> None:
    """Wait until every feed has ended here, at most `within` seconds."""
    waits = [asyncio.ensure_future(f.ended.wait()) for f in feeds]
    try:
        await asyncio.wait(waits, timeout=within)
    finally:
        for wait in waits:
            wait.cancel()


def _text(terminal: Terminal) -> str:
    payload = terminal.payload
    return str(payload.get("full_response", payload.get("partial", "")))


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Fanout:
    """The live feeds on this worker and the catch-up protocol."""

    def __init__(self, sio: socketio.AsyncServer, store: Store) -> None:
        self._sio = sio
        self._store = store
        self.feeds: dict[str, Feed] = {}
        self._ended: OrderedDict[str, Feed] = OrderedDict()
        self._turns: dict[tuple[str, str], _Turn] = {}

    def open(self, stream_id: str, session_id: str, start_at: int = 0) -> Feed:
        """A live feed; a tailer that picks a stream up at `start_at` passes it
        (the log position: its seqs of each kind are counted from the log when
        asked, until the tailer has counted them)."""
        feed = Feed(stream_id, session_id, last_seq=start_at, counted=not start_at)
        if start_at:
            for sid, _ in self._sio.manager.get_participants("/", feed.room):
                feed.live_since[sid] = start_at
        self.feeds[stream_id] = feed
        return feed

    def _in_room(self, sid: str, session_id: str) -> bool:
        return protocol.session_room(session_id) in self._sio.rooms(sid)

    def enter_room(self, sid: str, session_id: str, *, reasoning: bool = False) -> None:
        """Put `sid` in the session's room (and its reasoning room, opted in).
        Synchronous on purpose: the streams it now gets live start at the seq
        recorded here, in the same step."""
        if not self._sio.manager.is_connected(sid, "/"):
            return  # a socket that left while its request waited joins nothing
        member = self._in_room(sid, session_id)
        if reasoning and protocol.reasoning_room(session_id) not in self._sio.rooms(sid):
            self._sio.manager.basic_enter_room(sid, "/", protocol.reasoning_room(session_id))
            if member:  # it had the text live, the reasoning only from now on
                for feed in (*self.feeds.values(), *self._ended.values()):
                    if feed.session_id == session_id:
                        feed.reasoning_since[sid] = feed.last_seq
        if member:
            return
        self._sio.manager.basic_enter_room(sid, "/", protocol.session_room(session_id))
        for feed in self.feeds.values():
            if feed.session_id == session_id:
                feed.live_since[sid] = feed.last_seq

    async def emit(
        self,
        feed: Feed,
        event: str,
        payload: Payload,
        seq: int = 0,
        *,
        held: AbstractSet[str] = frozenset(),
    ) -> None:
        """Send to every live follower; `seq` advances the feed for token events.
        `held`: members that must not get this event now, besides those catching up."""
        if seq:
            feed.last_seq = seq
        for listener in feed.listeners:
            listener.queue.put_nowait((event, payload))
        skip = feed.catching_up | held if held else feed.catching_up
        await self._send_room(feed.room, event, payload, skip)

    async def emit_entry(self, feed: Feed, seq: int, entry: Payload) -> None:
        """Send the token-log entry at position `seq` to every live follower: a
        `chat_token` to all, a `chat_reasoning` to those that opted in."""
        feed.last_seq = seq
        if not protocol.is_reasoning(entry):
            feed.text_seq = entry["seq"]
            await self.emit(feed, protocol.TOKEN, entry)
            return
        feed.reasoning_seq = entry["seq"]
        for listener in feed.listeners:
            if listener.reasoning:
                listener.queue.put_nowait((protocol.REASONING, entry))
        room = protocol.reasoning_room(feed.session_id)
        await self._send_room(room, protocol.REASONING, entry, feed.catching_up)

    async def _send_room(
        self, room: str, event: str, payload: Payload, skip: AbstractSet[str]
    ) -> None:
        """What `AsyncServer.emit(room=..., ignore_queue=True)` does, without its
        task per recipient (the per-token hot path): the packet is encoded once
        and queued on each member's Engine.IO socket in turn."""
        members = list(self._sio.manager.get_participants("/", room))
        if not members:
            return
        encoded = self._sio.packet_class(sio_packet.EVENT, namespace="/", data=[event, payload])
        message = eio_packet.Packet(eio_packet.MESSAGE, encoded.encode())
        send = self._sio._send_eio_packet  # the step AsyncManager.emit takes per member
        for sid, eio_sid in members:
            if sid not in skip:
                await send(eio_sid, message)

    async def end(self, feed: Feed, terminal: Terminal, *, recorded: bool = True) -> None:
        """Send the terminal event and retire the feed. `recorded=False`: the end
        is this worker's alone (a tailer gave up), not the stream's."""
        feed.terminal = terminal
        feed.end_recorded = recorded
        feed.ended.set()
        if self.feeds.get(feed.stream_id) is feed:
            del self.feeds[feed.stream_id]
        held = set(feed.backfilling)  # they get it once their catch-up is sent
        for sid, _ in self._sio.manager.get_participants("/", feed.room):
            if sid not in feed.catching_up and sid not in held:
                feed.finished.add(sid)
        self._remember(feed)
        await self.emit(feed, terminal.event, terminal.payload, held=held)

    def has_ended(self, stream_id: str) -> bool:
        """Whether this worker recently relayed the stream's recorded end (a new
        tail of it would send its followers that end again): True from `end` on,
        also while a follower's catch-up has not sent it the end yet."""
        return stream_id in self._ended

    def _remember(self, feed: Feed) -> None:
        # Every recorded end, not only those a follower got: a socket catching up
        # is in the room, and a tail opened meanwhile (a join or resume holding a
        # record read before the end) would send it the end its catch-up sends.
        if not feed.end_recorded:
            return
        self._ended[feed.stream_id] = feed
        self._ended.move_to_end(feed.stream_id)
        while len(self._ended) > ENDED_FEEDS_KEPT:
            self._ended.popitem(last=False)

    def room_size(self, session_id: str) -> int:
        """Local Socket.IO members of the session's room."""
        room = protocol.session_room(session_id)
        return sum(1 for _ in self._sio.manager.get_participants("/", room))

    def followed_sessions(self) -> set[str]:
        """Sessions with a room member or a listener on this worker."""
        sessions = {f.session_id for f in self.feeds.values() if f.listeners}
        for room in self._sio.manager.rooms.get("/", {}):
            session_id = protocol.session_of_room(room) if isinstance(room, str) else None
            if session_id is not None and self.room_size(session_id):
                sessions.add(session_id)
        return sessions

    def listener_count(self, session_id: str) -> int:
        return sum(len(f.listeners) for f in self.feeds.values() if f.session_id == session_id)

    # -- following ----------------------------------------------------------
    async def join(
        self,
        sid: str,
        session_id: str,
        *,
        reasoning: bool = False,
        catch_up: Cursor | None = None,
    ) -> Payload | None:
        """Put `sid` in the session's room; return `{stream_id, seq}` of its active stream.

        Tokens with seq greater than the returned `seq` reach `sid` live (and,
        opted in to reasoning, reasoning after `reasoning_seq`); the same holds,
        unreported, for every other stream of the session. With `catch_up` the
        active stream's earlier tokens after it are sent too, before the join
        answers and before that stream's end, as `chat_resume` would.
        """
        before = [f for f in self.feeds.values() if f.session_id == session_id]
        active = await self._store.active_streams(session_id)
        record = active[0] if active else None
        # A stream the store has seen end may still be relayed here (a tailer a
        # poll behind): the join's history already holds its reply, so the socket
        # enters the room only once that relay is over, never to get its tail.
        running = {r.stream_id for r in active}
        lagging = [f for f in before if f.stream_id not in running and not f.ended.is_set()]
        if lagging:
            await _ended(lagging, JOIN_LAG_S)
        self.enter_room(sid, session_id, reasoning=reasoning)
        feed = self.feeds.get(record.stream_id) if record else None
        if feed is None:
            # No live feed here (the caller starts a tailer for a stream running
            # elsewhere): its end went out before the socket entered the room. It
            # is over for this socket too; the caller reads the messages after this.
            return None
        if catch_up is not None:
            # In the same step as its entry: the stream's end waits for the catch-up.
            feed.backfilling.add(sid)
        try:
            live_since = feed.live_since.get(sid, 0)
            text_seq, reasoning_seq = await self.seqs_at(feed, live_since)
            if reasoning and sid in feed.reasoning_since:  # it opted in after it joined
                reasoning_seq = (await self.seqs_at(feed, feed.reasoning_since[sid]))[1]
            if catch_up is not None:
                async with self._turn(sid, feed.stream_id):
                    await self._backfill(sid, feed, catch_up)
        finally:
            if catch_up is not None:
                await self._held_end(sid, feed)
        return protocol.active_stream_view(record, text_seq, reasoning_seq if reasoning else None)

    async def _held_end(self, sid: str, feed: Feed) -> None:
        """Release `sid` from `feed.backfilling`: the end, if it came meanwhile, now."""
        feed.backfilling.discard(sid)
        if feed.terminal is not None and sid not in feed.finished:
            await self._to(sid)(feed.terminal.event, feed.terminal.payload)
            feed.finished.add(sid)
            self._remember(feed)

    async def seqs_at(self, feed: Feed, position: int) -> tuple[int, int]:
        """The `chat_token` and `chat_reasoning` seqs at a log position the feed
        passed: from the feed once it has counted them, else from the log."""
        if feed.counted or not position:
            return feed.seqs_at(position)
        return count_kinds(await self._store.read_tokens(feed.stream_id, 0, position))

    async def resume_socket(self, sid: str, record: StreamRecord, after: Cursor) -> str:
        """Replay what follows `after` to `sid`, then keep it live in the room; return
        the status.

        One resume per socket and stream runs at a time: overlapping replays
        to one socket would send tokens twice.
        """
        async with self._turn(sid, record.stream_id):
            return await self._resume_socket(sid, record, after)

    @contextlib.asynccontextmanager
    async def _turn(self, sid: str, stream_id: str) -> AsyncIterator[None]:
        key = (sid, stream_id)
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[key]

    async def _resume_socket(self, sid: str, record: StreamRecord, after: Cursor) -> str:
        feed = self.feeds.get(record.stream_id)
        if not self._sio.manager.is_connected(sid, "/"):
            return "streaming"  # it left meanwhile: nothing to send, nobody to answer
        if feed is None:
            ended = self._ended.get(record.stream_id)
            if ended is not None and ended.terminal is not None and sid in ended.finished:
                # It had the end already: send only the tokens it lacks (and the
                # reasoning, when it opts in only now).
                self.enter_room(sid, record.session_id, reasoning=after.reasoning)
                await self._backfill(sid, ended, after)
                return ended.terminal.status
        elif self._in_room(sid, record.session_id):
            # Already live (e.g. after session_join): send only what it missed
            # before that; the live tokens keep flowing, none is sent twice. The
            # terminal waits for the catch-up (`Feed.backfilling`).
            self.enter_room(sid, record.session_id, reasoning=after.reasoning)
            feed.backfilling.add(sid)
            try:
                await self._backfill(sid, feed, after)
            finally:
                await self._held_end(sid, feed)
            return feed.terminal.status if feed.terminal is not None else "streaming"
        member = self._in_room(sid, record.session_id)
        thinker = protocol.reasoning_room(record.session_id) in self._sio.rooms(sid)
        if feed is not None:
            feed.catching_up.add(sid)
        try:
            self.enter_room(sid, record.session_id, reasoning=after.reasoning)
            if feed is not None:
                feed.live_since[sid] = after.position
            send = self._to(sid)
            if feed is None:
                terminal, status = await self._replay_ended(record, after, send)
                if terminal is not None:
                    ended = self._ended.get(record.stream_id) or Feed(
                        record.stream_id, record.session_id, terminal=terminal
                    )
                    self._finish(ended, sid, after)
                return status
            status = await self._replay(record, after, send, feed, lambda: None)
            if feed.terminal is not None and status != "streaming":
                self._finish(feed, sid, after)
            return status
        except BaseException:
            # A refused resume leaves no trace.
            if not member:
                room = protocol.session_room(record.session_id)
                self._sio.manager.basic_leave_room(sid, "/", room)
            if not thinker and after.reasoning:
                room = protocol.reasoning_room(record.session_id)
                self._sio.manager.basic_leave_room(sid, "/", room)
            raise
        finally:
            if feed is not None:
                feed.catching_up.discard(sid)

    def _finish(self, feed: Feed, sid: str, after: Cursor) -> None:
        """`sid` got every token after `after` and the terminal event of `feed`."""
        feed.live_since[sid] = after.position
        feed.finished.add(sid)
        self._remember(feed)

    def _to(self, sid: str) -> Send:
        async def send(event: str, payload: Payload) -> None:
            await self._sio.emit(event, payload, to=sid, ignore_queue=True)

        return send

    async def _backfill(self, sid: str, feed: Feed, after: Cursor) -> None:
        """Send `sid` the tokens after `after` it had not had when its live delivery
        began (and the reasoning, when it opted in to it later than that)."""
        live_since = feed.live_since.get(sid, 0)
        start, upto = after.position, live_since
        if after.reasoning and sid in feed.reasoning_since:
            upto = max(upto, feed.reasoning_since[sid])
        if start >= upto:
            return
        send = self._to(sid)
        await self._send_log(
            feed.stream_id, after, send, upto=upto, start=start, text_upto=live_since
        )
        feed.live_since[sid] = start
        if after.reasoning:
            feed.reasoning_since.pop(sid, None)

    async def resume_listener(self, listener: Listener, record: StreamRecord, after: Cursor) -> str:
        """Replay what follows `after` into `listener`, then attach it to the live feed."""
        feed = self.feeds.get(record.stream_id)
        if feed is None:
            return (await self._replay_ended(record, after, listener.send))[1]

        def attach() -> None:
            feed.listeners.add(listener)

        return await self._replay(record, after, listener.send, feed, attach)

    def attach(self, stream_id: str, listener: Listener) -> bool:
        """Follow a live stream from its next event on (call right after `runner.start`)."""
        feed = self.feeds.get(stream_id)
        if feed is None:
            return False
        feed.listeners.add(listener)
        return True

    def detach(self, listener: Listener) -> None:
        for feed in self.feeds.values():
            feed.listeners.discard(listener)

    async def _replay(
        self,
        record: StreamRecord,
        after: Cursor,
        send: Send,
        feed: Feed,
        attach: Callable[[], None],
    ) -> str:
        """Send the log after `after`, until it has caught up with the live feed."""
        last = after.position
        while True:
            # Only seqs already sent live: one logged but not yet emitted will
            # reach the follower live, once attached. Each was logged before it
            # was emitted, so the log must hold them all (else log_unavailable).
            target = feed.last_seq
            if last < target:
                last = await self._send_log(record.stream_id, after, send, upto=target, start=last)
            # No await from here to attach: no live token can slip in between.
            if feed.last_seq <= last:
                if feed.terminal is None:
                    attach()
                    return "streaming"
                await send(feed.terminal.event, feed.terminal.payload)
                return feed.terminal.status

    async def _replay_ended(
        self, record: StreamRecord, after: Cursor, send: Send
    ) -> tuple[Terminal | None, str]:
        """The stream is not live on this worker: send its log and its end."""
        terminal = await self._store.get_terminal(record.stream_id)
        texts: list[str] = []

        async def keep(event: str, payload: Payload) -> None:
            texts.append(str(payload.get("token", "")))
            await send(event, payload)

        last = await self._send_log(record.stream_id, after, keep)
        if terminal is None:
            return None, "streaming"
        # The end's text is the whole log's: from 0, anything shorter lost entries.
        if after.after == 0 and not "".join(texts).startswith(_text(terminal)):
            raise log_unavailable(record.stream_id, last + 1)
        await send(terminal.event, terminal.payload)
        return terminal, terminal.status

    async def _send_log(
        self,
        stream_id: str,
        after: Cursor,
        send: Send,
        upto: int | None = None,
        start: int | None = None,
        text_upto: int | None = None,
    ) -> int:
        """Send the logged entries `after` wants, from position `start` (default:
        its position) through `upto` (text only through `text_upto`: the follower
        had the rest live), a page per read; return the last position read.
        Raise `log_unavailable` at the first gap."""
        last = after.position if start is None else start
        while upto is None or last < upto:
            want = LOG_PAGE if upto is None else min(LOG_PAGE, upto - last)
            page = await self._store.read_tokens(stream_id, last, want)
            for entry in page:
                if entry.seq != last + 1:
                    raise log_unavailable(stream_id, last + 1, entry.seq - 1)
                event = after.event(entry.payload)
                if event == protocol.TOKEN and text_upto is not None and entry.seq > text_upto:
                    event = None
                if event is not None:
                    await send(event, entry.payload)
                last = entry.seq
            if len(page) < want:
                break
        if upto is not None and last < upto:
            raise log_unavailable(stream_id, last + 1, upto)
        return last
