"""Session and stream operations shared by the Socket.IO and HTTP transports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from chatsock import protocol
from chatsock.ending import ended_elsewhere, owner_lost
from chatsock.errors import ChatsockError, no_session, no_stream, stream_lost
from chatsock.fanout import Cursor, Fanout, Listener
from chatsock.identity import Identity
from chatsock.protocol import Payload
from chatsock.runner import StreamRunner
from chatsock.signals import SignalBus
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import Message, SessionInfo, StreamRecord, Terminal
from chatsock.tailer import Ends, Tailers
from chatsock.timing import (
    DELETE_WAIT_S,
    END_WAIT_S,
    PRESENCE_REFRESH_S,
    PRESENCE_TTL_S,
    STOP_ACK_WAIT_S,
    STOP_SIGNAL_REPEAT_S,
)

log = logging.getLogger(__name__)


class SessionService:
    """Looks things up, stops streams wherever they run, and reacts to disconnects."""

    def __init__(
        self,
        store: Store,
        runner: StreamRunner,
        fanout: Fanout,
        *,
        stop_on_disconnect: bool,
        bus: SignalBus | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.fanout = fanout
        self.stop_on_disconnect = stop_on_disconnect
        self.bus = bus
        self.tailers = Tailers(store, fanout, is_local=runner.owns)
        self.connected_sids: set[str] = set()
        # Called after a session is deleted (the app tells every worker's members).
        self.on_deleted: Callable[[str], Awaitable[None]] | None = None
        # Called with the ends a delete hands over (the app sends them to every
        # other worker, ahead of session_deleted on the same channel).
        self.share_ends: Callable[[Ends], Awaitable[None]] | None = None

    async def session(self, session_id: str, who: Identity) -> SessionInfo:
        """The session's header; `not_found` when it is missing or not `who`'s."""
        info = await self.store.get_session(session_id)
        if info is None or not who.owns(info.owner):
            raise no_session(session_id)
        return info

    async def stream(self, stream_id: str, who: Identity) -> StreamRecord:
        """The stream's record; `not_found` when it is missing or not `who`'s, and
        `stream_lost` when the store lost it mid-stream (its end says so)."""
        record = await self.store.get_stream(stream_id)
        if record is None:
            end = await self.store.recorded_end(stream_id)
            if end is not None and end[0].payload.get("code") == "stream_lost" and who.owns(end[1]):
                raise stream_lost(stream_id)
        if record is None or not who.owns(record.user):
            raise no_stream(stream_id)
        return record

    async def stop(self, stream_id: str, who: Identity) -> bool:
        """Stop a stream; True when it ended as stopped, False when its end was
        decided otherwise (complete, failed, or its owner died) or already recorded.
        The answer is the recorded end, never a guess. Unknown ids, and other users'
        streams, are `not_found`; `store_unavailable` when a stream on another
        worker recorded no end within END_WAIT_S (the stop stays requested)."""
        record = await self.stream(stream_id, who)
        if stream_id in self.runner.streams:
            return await self.runner.stop_for_ack(stream_id)
        if record.status != "streaming":
            return False
        if await owner_lost(self.store, record, local=self.runner.owns(stream_id)):
            return False  # nobody runs it: it is recorded as worker_lost instead
        # Owned by another worker: wait for its recorded end, so the answer says
        # how it ended rather than what was asked. A stop that lands after the
        # provider finished leaves the reply complete, and the answer says so.
        await self._stop_elsewhere(stream_id)
        terminal = await self._stopped_elsewhere(record)
        return terminal.status == "stopped"

    async def _stopped_elsewhere(self, record: StreamRecord) -> Terminal:
        """The recorded end of a stream stopped on another worker, waiting up to
        END_WAIT_S (an owner under load may take seconds to flush, persist and
        record it). Its owner records it; if its owner died meanwhile, it is
        recorded here as worker_lost. For the first STOP_ACK_WAIT_S the stop signal
        is repeated every STOP_SIGNAL_REPEAT_S: an owner whose listener was
        resubscribing (Redis just restarted) hears a repeat, rather than find the
        stop flag at its next upkeep tick (up to UPKEEP_S later)."""
        stream_id = record.stream_id
        loop = asyncio.get_running_loop()
        repeat_until = loop.time() + STOP_ACK_WAIT_S
        waiting = asyncio.ensure_future(
            ended_elsewhere(self.store, stream_id, END_WAIT_S, until_owner_gone=True)
        )
        try:
            while self.bus is not None and loop.time() < repeat_until:
                await asyncio.wait({waiting}, timeout=STOP_SIGNAL_REPEAT_S)
                if waiting.done():
                    break
                try:
                    await self.bus.stop(stream_id)
                except StoreUnavailable:
                    pass  # the flag is set; the owner's upkeep finds it
            terminal = await waiting
        finally:
            waiting.cancel()
        local = self.runner.owns(stream_id)
        if terminal is None and await owner_lost(self.store, record, local=local):
            terminal = await self.store.get_terminal(stream_id)
        if terminal is None:
            raise ChatsockError(
                "store_unavailable",
                f"the stop was sent, but the stream's end was not recorded within "
                f"{END_WAIT_S:g}s; its end event says how it ended",
                retryable=False,
            )
        return terminal

    async def _stop_elsewhere(self, stream_id: str) -> None:
        """Ask the worker that owns `stream_id` to stop it: a signal for speed, and
        a flag its owner also polls in case the signal is missed."""
        await self.store.request_stop(stream_id)
        if self.bus is not None:
            await self.bus.stop(stream_id)

    # -- following (a stream may run on another worker) ---------------------
    async def _follow_elsewhere(self, record: StreamRecord) -> StreamRecord:
        """Tail `record` here when another worker runs it; when that worker died,
        record the stream as worker_lost and return its ended record."""
        local = self.runner.owns(record.stream_id)
        if await owner_lost(self.store, record, local=local):
            return await self._record(record.stream_id)
        if record.status == "streaming" and not local:
            self.tailers.ensure(record, start_at=record.last_seq)
        return record

    async def _record(self, stream_id: str) -> StreamRecord:
        record = await self.store.get_stream(stream_id)
        if record is None:
            raise no_stream(stream_id)
        return record

    async def join(
        self,
        sid: str,
        session_id: str,
        who: Identity,
        *,
        reasoning: bool = False,
        catch_up: Cursor | None = None,
    ) -> tuple[list[Message], Payload | None]:
        """session_join: the messages, and the active stream this sid now follows.
        The sid joins the room only once `who` is known to own the session."""
        await self.session(session_id, who)
        await self._present(session_id)
        for record in await self.store.active_streams(session_id):
            await self._follow_elsewhere(record)
        active = await self.fanout.join(sid, session_id, reasoning=reasoning, catch_up=catch_up)
        # After the join (and any worker_lost record): a stream that ended while the
        # socket joined is reported inactive, so its reply must be in these messages.
        messages = await self.store.get_messages(session_id)
        return messages, active

    async def resume_socket(
        self, sid: str, stream_id: str, after: Cursor, who: Identity, epoch: str | None = None
    ) -> str:
        """chat_resume; `stream_lost` when the store lost what the client had (see
        `_follow`)."""
        record = await self._follow(stream_id, who, after.furthest, epoch)
        return await self.fanout.resume_socket(sid, record, after)

    async def resume_listener(
        self,
        listener: Listener,
        stream_id: str,
        after: Cursor,
        who: Identity,
        epoch: str | None = None,
    ) -> str:
        record = await self._follow(stream_id, who, after.furthest, epoch)
        return await self.fanout.resume_listener(listener, record, after)

    async def _follow(
        self, stream_id: str, who: Identity, after: int = 0, epoch: str | None = None
    ) -> StreamRecord:
        """The record of a stream `who` resumes after seq `after`. `stream_lost` when
        the stream ended so, or the client's `epoch` is not the stream's, or the
        client names its epoch and the log ends before `after` (every seq a client
        got was logged first, so the store lost entries): a resume never serves a
        log with a hole as whole. Without an epoch, a seq past the end is a client
        skipping ahead, as before epochs: it gets what follows."""
        record = await self.stream(stream_id, who)
        stale = epoch is not None and bool(record.epoch) and epoch != record.epoch
        if record.status == "error" and not stale:
            # Ended because the store lost its log: there is nothing to replay.
            end = await self.store.get_terminal(stream_id)
            stale = end is not None and end.payload.get("code") == "stream_lost"
        if stale or (epoch is not None and after > record.last_seq):
            log.warning(
                "stream %s: resume after seq %d refused: the store lost its log "
                "(it ends at seq %d%s)",
                stream_id,
                after,
                record.last_seq,
                ", another epoch" if stale else "",
            )
            raise stream_lost(stream_id)
        await self._present(record.session_id)
        return await self._follow_elsewhere(record)

    # -- signals from other workers -----------------------------------------
    async def on_started(self, record: dict[str, Any], start: Payload) -> None:
        """Another worker started a stream: tail it if this worker has its room's members."""
        stream = StreamRecord.from_dict(record)
        if stream.owner == self.runner.worker_id or stream.stream_id in self.runner.streams:
            return
        if self.fanout.room_size(stream.session_id) > 0:
            self.tailers.ensure(stream, start_at=0, start=start)

    async def on_stop(self, stream_id: str) -> None:
        await self.runner.stop(stream_id)

    async def delete(self, session_id: str, who: Identity) -> None:
        await self.session(session_id, who)
        running = [record.stream_id for record in await self.store.active_streams(session_id)]
        for stream_id in running:
            if stream_id in self.runner.streams:
                await self.runner.stop(stream_id)
            else:
                await self._stop_elsewhere(stream_id)
        # Let each stream persist its stopped reply first, or it lands in the
        # deleted session and reappears if the session id is used again.
        await asyncio.gather(*(self._until_ended(stream_id) for stream_id in running))
        # A worker still relaying a stream (a follower's tailer polls) would find
        # it deleted: it gets the end and log from here, before session_deleted.
        ends = await self._ends(running)
        if ends and self.share_ends is not None:
            await self.share_ends(ends)
        await self.tailers.hand_over(ends)
        await self.store.delete_session(session_id)
        if self.on_deleted is not None:
            await self.on_deleted(session_id)

    async def _ends(self, stream_ids: list[str]) -> Ends:
        """The recorded end and whole log of each ended stream of `stream_ids`."""
        ends: Ends = {}
        for stream_id in stream_ids:
            terminal = await self.store.get_terminal(stream_id)
            if terminal is not None:
                ends[stream_id] = (terminal, await self.store.read_tokens(stream_id, 0))
        return ends

    async def _until_ended(self, stream_id: str) -> None:
        """Wait (at most DELETE_WAIT_S) until a stopped stream has stored its end."""
        stream = self.runner.streams.get(stream_id)
        if stream is not None and stream.task is not None:
            await asyncio.wait({stream.task}, timeout=DELETE_WAIT_S)
            return
        # Running on another worker: it persists the reply, then records the end.
        await ended_elsewhere(self.store, stream_id, DELETE_WAIT_S, until_owner_gone=True)

    def connected(self, sid: str) -> None:
        self.connected_sids.add(sid)

    async def disconnected(self, sid: str, rooms: list[str]) -> None:
        self.connected_sids.discard(sid)
        if not self.stop_on_disconnect:
            return
        for room in rooms:
            session_id = protocol.session_of_room(room)
            # The leaving sid is still listed in the room while its handler runs.
            if session_id is not None and self._local_followers(session_id, leaving=1) == 0:
                await self._nobody_here(session_id)

    async def follower_left(self, session_id: str) -> None:
        """An SSE follower went away: stop the session's streams if nobody is left."""
        if self.stop_on_disconnect and self._local_followers(session_id) == 0:
            await self._nobody_here(session_id)

    def _local_followers(self, session_id: str, leaving: int = 0) -> int:
        room = self.fanout.room_size(session_id) - leaving
        return room + self.fanout.listener_count(session_id)

    async def _nobody_here(self, session_id: str) -> None:
        """This worker has no follower of the session left (stop_on_disconnect)."""
        worker = self.runner.worker_id
        if self.store.shared:
            await self.store.clear_present(session_id, worker)
            if await self.store.present_elsewhere(session_id, worker):
                return
        for stream in self.runner.started_streams():
            if stream.record.session_id == session_id:
                log.info("stream %s: no follower left, stopping", stream.record.stream_id)
                await self.runner.stop(stream.record.stream_id)

    async def _present(self, session_id: str) -> None:
        if self.stop_on_disconnect and self.store.shared:
            await self.store.mark_present(session_id, self.runner.worker_id, PRESENCE_TTL_S)

    async def upkeep(self) -> None:
        """Run until cancelled (stop_on_disconnect with Redis): say which sessions this
        worker has followers of, and stop owned streams nobody follows anywhere."""
        if not (self.stop_on_disconnect and self.store.shared):
            return
        worker = self.runner.worker_id
        while True:
            await asyncio.sleep(PRESENCE_REFRESH_S)
            if not self.stop_on_disconnect:
                continue  # draining: clients left only to follow from another worker
            try:
                for session_id in self.fanout.followed_sessions():
                    await self.store.mark_present(session_id, worker, PRESENCE_TTL_S)
                for stream in self.runner.started_streams():
                    session_id = stream.record.session_id
                    if self._local_followers(session_id) == 0 and not (
                        await self.store.present_elsewhere(session_id, worker)
                    ):
                        log.info(
                            "stream %s: no follower on any worker, stopping",
                            stream.record.stream_id,
                        )
                        await self.runner.stop(stream.record.stream_id)
            except StoreUnavailable as exc:
                log.warning("presence upkeep: %s", exc)
