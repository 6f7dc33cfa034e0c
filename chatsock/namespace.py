"""The Socket.IO namespace: validate, delegate, answer. No business logic here."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from chatsock import protocol
from chatsock.errors import ChatsockError
from chatsock.ids import new_id
from chatsock.requests import (
    ChatStreamRequest,
    JoinRequest,
    ResumeRequest,
    StopRequest,
    check_limits,
    parse,
)
from chatsock.runner import StreamRunner
from chatsock.sessions import SessionService
from chatsock.store import StoreUnavailable

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[protocol.Payload]]


async def _answer(event: str, sid: str, work: Callable[[], Awaitable[protocol.Payload]]) -> Any:
    """Run a handler body, turning every failure into an error ack."""
    try:
        return await work()
    except ChatsockError as exc:
        log.info("%s from %s rejected: %s: %s", event, sid, exc.code, exc.message)
        return protocol.ack_error(exc.code, exc.message)
    except StoreUnavailable as exc:
        log.warning("%s from %s: store unavailable: %s", event, sid, exc)
        return protocol.ack_error("store_unavailable", str(exc))
    except Exception:
        log.exception("%s from %s failed", event, sid)
        return protocol.ack_error("internal", f"{event} failed on the server; see its log")


class ChatNamespace(socketio.AsyncNamespace):
    """`/`: chat_stream, chat_stop, session_join, chat_resume."""

    def __init__(
        self, runner: StreamRunner, sessions: SessionService, namespace: str = "/"
    ) -> None:
        super().__init__(namespace)
        self.runner = runner
        self.sessions = sessions

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Dispatch known events; answer unknown ones with an error instead of dropping them."""
        sid = args[0] if args else "?"
        # During the real connect/disconnect the sid is pending, hence not "connected";
        # a client that emits an event named "connect" is.
        reserved = event in ("connect", "disconnect")
        spoofed = reserved and self.server.manager.is_connected(sid, self.namespace)
        if not spoofed and (reserved or hasattr(self, f"on_{event}")):
            return await super().trigger_event(event, *args)
        log.info("unknown event %r from %s", event, sid)
        return protocol.ack_error("invalid_request", f"event: unknown event {event!r}")

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        self.sessions.connected(sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        rooms = [r for r in self.rooms(sid) if r != sid]
        await self.sessions.disconnected(sid, rooms)

    async def on_chat_stream(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            request = parse(ChatStreamRequest, data)
            check_limits(request, self.runner.limits)
            session_id = request.session_id or new_id("ses")

            def admit() -> None:
                # Only an accepted request joins the room, and it joins before the
                # stream's first event can be sent (the runner calls this first).
                self.sessions.fanout.enter_room(sid, session_id)

            return await self.runner.start(request, session_id, admit=admit)

        return await _answer("chat_stream", sid, work)

    async def on_chat_stop(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            request = parse(StopRequest, data)
            return protocol.ack_ok(stopped=await self.sessions.stop(request.stream_id))

        return await _answer("chat_stop", sid, work)

    async def on_session_join(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            request = parse(JoinRequest, data)
            messages, active = await self.sessions.join(sid, request.session_id)
            return protocol.ack_ok(
                session_id=request.session_id,
                messages=[protocol.message_view(m) for m in messages],
                active_stream=active,
            )

        return await _answer("session_join", sid, work)

    async def on_chat_resume(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            request = parse(ResumeRequest, data)
            status = await self.sessions.resume_socket(sid, request.stream_id, request.after)
            return protocol.ack_ok(status=status)

        return await _answer("chat_resume", sid, work)
