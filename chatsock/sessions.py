"""Session and stream operations shared by the Socket.IO and HTTP transports."""

from __future__ import annotations

import logging

from chatsock.errors import ChatsockError
from chatsock.fanout import Fanout
from chatsock.runner import StreamRunner
from chatsock.store import Store
from chatsock.store.models import Message, SessionInfo, StreamRecord

log = logging.getLogger(__name__)


class SessionService:
    """Looks things up, stops streams wherever they run, and reacts to disconnects."""

    def __init__(
        self, store: Store, runner: StreamRunner, fanout: Fanout, *, stop_on_disconnect: bool
    ) -> None:
        self.store = store
        self.runner = runner
        self.fanout = fanout
        self.stop_on_disconnect = stop_on_disconnect
        self.connected_sids: set[str] = set()

    async def session(self, session_id: str) -> SessionInfo:
        info = await self.store.get_session(session_id)
        if info is None:
            raise ChatsockError("not_found", f"session_id: no session {session_id!r}")
        return info

    async def messages(self, session_id: str) -> list[Message]:
        await self.session(session_id)
        return await self.store.get_messages(session_id)

    async def stream(self, stream_id: str) -> StreamRecord:
        record = await self.store.get_stream(stream_id)
        if record is None:
            raise ChatsockError("not_found", f"stream_id: no stream {stream_id!r}")
        return record

    async def stop(self, stream_id: str) -> bool:
        """Stop a stream; False when it already ended. Unknown ids are `not_found`."""
        record = await self.stream(stream_id)
        if record.status != "streaming":
            return False
        if await self.runner.stop(stream_id):
            return True
        # Owned by another worker (Redis): raise the flag its owner watches.
        await self.store.request_stop(stream_id)
        return True

    async def delete(self, session_id: str) -> None:
        await self.session(session_id)
        for record in await self.store.active_streams(session_id):
            await self.stop(record.stream_id)
        await self.store.delete_session(session_id)

    def connected(self, sid: str) -> None:
        self.connected_sids.add(sid)

    async def disconnected(self, sid: str, rooms: list[str]) -> None:
        self.connected_sids.discard(sid)
        if not self.stop_on_disconnect:
            return
        for stream in list(self.runner.streams.values()):
            session_id = stream.record.session_id
            room = stream.feed.room
            if room not in rooms:
                continue
            # The leaving sid is still listed in the room while its handler runs.
            others = self.fanout.room_size(session_id) - 1
            if others <= 0 and self.fanout.listener_count(session_id) == 0:
                log.info("stream %s: last follower left, stopping", stream.record.stream_id)
                await self.runner.stop(stream.record.stream_id)

    async def follower_left(self, session_id: str) -> None:
        """An SSE follower went away: stop the session's streams if nobody is left."""
        if not self.stop_on_disconnect:
            return
        if self.fanout.room_size(session_id) == 0 and self.fanout.listener_count(session_id) == 0:
            for stream in list(self.runner.streams.values()):
                if stream.record.session_id == session_id:
                    await self.runner.stop(stream.record.stream_id)
