"""Delivers a stream's events to the followers on this worker, gap-free.

Live followers are the members of the session's Socket.IO room, plus direct
listeners (SSE responses). A follower that resumes from an older `seq` is
excluded from live delivery while it catches up from the token log; it is
attached to live delivery in the same event-loop step in which the catch-up
proves it has seen everything up to the feed's last seq. Hence no gap and
no duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import socketio

from chatsock import protocol
from chatsock.protocol import Payload
from chatsock.store import Store
from chatsock.store.models import StreamRecord, Terminal

log = logging.getLogger(__name__)

Send = Callable[[str, Payload], Awaitable[None]]


class Listener:
    """A direct follower of one stream (an SSE response): events land on `queue`."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Payload]] = asyncio.Queue()

    async def send(self, event: str, payload: Payload) -> None:
        self.queue.put_nowait((event, payload))


@dataclass(eq=False)
class Feed:
    """One live stream as seen by this worker."""

    stream_id: str
    session_id: str
    last_seq: int = 0
    terminal: Terminal | None = None
    catching_up: set[str] = field(default_factory=set)
    listeners: set[Listener] = field(default_factory=set)
    # Room members that joined after the first token: the seq after which they
    # have received every token live (members without an entry: all of them).
    live_since: dict[str, int] = field(default_factory=dict)

    @property
    def room(self) -> str:
        return protocol.session_room(self.session_id)


class Fanout:
    """The live feeds on this worker and the catch-up protocol."""

    def __init__(self, sio: socketio.AsyncServer, store: Store) -> None:
        self._sio = sio
        self._store = store
        self.feeds: dict[str, Feed] = {}

    def open(self, stream_id: str, session_id: str, start_at: int = 0) -> Feed:
        """A live feed; a tailer that picks a stream up at `start_at` passes it."""
        feed = Feed(stream_id, session_id, last_seq=start_at)
        if start_at:
            room = protocol.session_room(session_id)
            for sid, _ in self._sio.manager.get_participants("/", room):
                feed.live_since[sid] = start_at
        self.feeds[stream_id] = feed
        return feed

    def _in_room(self, sid: str, session_id: str) -> bool:
        return protocol.session_room(session_id) in self._sio.rooms(sid)

    async def emit(self, feed: Feed, event: str, payload: Payload, seq: int = 0) -> None:
        """Send to every live follower; `seq` advances the feed for token events."""
        if seq:
            feed.last_seq = seq
        for listener in feed.listeners:
            listener.queue.put_nowait((event, payload))
        await self._sio.emit(
            event,
            payload,
            room=feed.room,
            skip_sid=list(feed.catching_up) if feed.catching_up else None,
            ignore_queue=True,
        )

    async def end(self, feed: Feed, terminal: Terminal) -> None:
        """Send the terminal event and retire the feed."""
        feed.terminal = terminal
        self.feeds.pop(feed.stream_id, None)
        await self.emit(feed, terminal.event, terminal.payload)

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
    async def join(self, sid: str, session_id: str) -> Payload | None:
        """Put `sid` in the session's room; return `{stream_id, seq}` of its active stream.

        Tokens with seq greater than the returned `seq` reach `sid` live.
        """
        active = await self._store.active_streams(session_id)
        record = active[0] if active else None
        feed = self.feeds.get(record.stream_id) if record else None
        member = self._in_room(sid, session_id)
        await self._sio.enter_room(sid, protocol.session_room(session_id))
        # No await between entering the room and reading the feed's seq.
        if feed is None:
            return protocol.active_stream_view(record)
        if not member:
            feed.live_since[sid] = feed.last_seq
        return protocol.active_stream_view(record, feed.last_seq)

    async def resume_socket(self, sid: str, record: StreamRecord, after: int) -> str:
        """Replay seq > after to `sid`, then keep it live in the room; return the status."""
        feed = self.feeds.get(record.stream_id)
        if feed is not None and sid not in feed.catching_up:
            if self._in_room(sid, record.session_id):
                # Already live (e.g. after session_join): send only what it missed
                # before that; the live tokens keep flowing, none is sent twice.
                live_since = feed.live_since.get(sid, 0)
                for entry in await self._store.read_tokens(record.stream_id, after):
                    if entry.seq > live_since:
                        break
                    await self._sio.emit(protocol.TOKEN, entry.payload, to=sid, ignore_queue=True)
                return "streaming"
            feed.live_since[sid] = after
        if feed is not None:
            feed.catching_up.add(sid)
        try:
            await self._sio.enter_room(sid, protocol.session_room(record.session_id))

            async def send(event: str, payload: Payload) -> None:
                await self._sio.emit(event, payload, to=sid, ignore_queue=True)

            return await self._replay(record, after, send, feed, lambda: None)
        finally:
            if feed is not None:
                feed.catching_up.discard(sid)

    async def resume_listener(self, listener: Listener, record: StreamRecord, after: int) -> str:
        """Replay seq > after into `listener`, then attach it to the live feed."""
        feed = self.feeds.get(record.stream_id)

        def attach() -> None:
            if feed is not None:
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
        after: int,
        send: Send,
        feed: Feed | None,
        attach: Callable[[], None],
    ) -> str:
        last = after
        while True:
            for entry in await self._store.read_tokens(record.stream_id, last):
                if entry.seq > last:
                    await send(protocol.TOKEN, entry.payload)
                    last = entry.seq
            if feed is None:
                return await self._replay_ended(record, last, send)
            if feed.last_seq <= last:
                if feed.terminal is None:
                    attach()
                    return "streaming"
                await send(feed.terminal.event, feed.terminal.payload)
                return feed.terminal.status

    async def _replay_ended(self, record: StreamRecord, last: int, send: Send) -> str:
        """The stream is not live on this worker: send the rest of its log and its end."""
        terminal = await self._store.get_terminal(record.stream_id)
        if terminal is None:
            return "streaming"
        for entry in await self._store.read_tokens(record.stream_id, last):
            await send(protocol.TOKEN, entry.payload)
        await send(terminal.event, terminal.payload)
        return terminal.status
