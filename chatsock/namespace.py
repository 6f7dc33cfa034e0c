"""The Socket.IO namespace: validate, delegate, answer. No business logic here."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from socketio.exceptions import ConnectionRefusedError as Refused

from chatsock import protocol
from chatsock.errors import ChatsockError
from chatsock.fanout import Cursor
from chatsock.gate import Gate
from chatsock.identity import AuthError, Identity
from chatsock.ids import new_id
from chatsock.logsafe import shown
from chatsock.quotas import EventBudget
from chatsock.regenerate import prepare
from chatsock.requests import (
    ChatStreamRequest,
    JoinRequest,
    ResumeRequest,
    StopRequest,
    parse,
)
from chatsock.runner import StreamRunner
from chatsock.sessions import SessionService
from chatsock.sockets import Sockets
from chatsock.store import StoreUnavailable

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[protocol.Payload]]


async def _answer(event: str, sid: str, work: Callable[[], Awaitable[protocol.Payload]]) -> Any:
    """Run a handler body, turning every failure into an error ack."""
    try:
        return await work()
    except ChatsockError as exc:
        log.info("%s from %s rejected: %s: %s", event, sid, exc.code, exc.message)
        return protocol.ack_error(exc.code, exc.message, exc.retry_after, retryable=exc.retryable)
    except StoreUnavailable as exc:
        log.warning("%s from %s: store unavailable: %s", event, sid, exc)
        return protocol.ack_error(
            "store_unavailable", "the store is unavailable; retry shortly", retryable=True
        )
    except Exception:
        log.exception("%s from %s failed", event, sid)
        return protocol.ack_error("internal", f"{event} failed on the server; see its log")


def _token(auth: Any) -> str | None:
    """The token of a connect `auth` payload (`io(url, {auth: {token}})`)."""
    if auth is None:
        return None
    token = auth.get("token") if isinstance(auth, dict) else None
    if token is not None and not isinstance(token, str):
        raise AuthError("malformed token: auth.token must be a string")
    return token


class ChatNamespace(socketio.AsyncNamespace):
    """`/`: chat_stream, chat_regenerate, chat_stop, session_join, chat_resume.

    Every socket is authenticated at connect; every handler acts as that
    socket's identity, and a socket joins a session's room only after the
    check that the session is its user's."""

    def __init__(
        self,
        runner: StreamRunner,
        sessions: SessionService,
        gate: Gate,
        budget: Callable[[], EventBudget],
        namespace: str = "/",
    ) -> None:
        super().__init__(namespace)
        self.runner = runner
        self.sessions = sessions
        self.gate = gate
        self.clients = Sockets(self._expired, budget)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Dispatch known events; answer unknown ones with an error instead of dropping them."""
        sid = args[0] if args else "?"
        # During the real connect/disconnect the sid is pending, hence not "connected";
        # a client that emits an event named "connect" is.
        reserved = event in ("connect", "disconnect")
        spoofed = reserved and self.server.manager.is_connected(sid, self.namespace)
        if reserved and not spoofed:
            return await super().trigger_event(event, *args)
        client = self.clients.get(sid)
        if client is None:
            return protocol.ack_error("unauthorized", "connect first")
        wait = client.budget.spend()
        if wait > 0:
            if client.budget.exhausted():
                log.info("socket %s: event flood, disconnecting", sid)
                await self.disconnect(sid)
            return protocol.ack_error(
                "rate_limited",
                "too many events on this connection (limits.socket_events_per_second)",
                wait,
            )
        if not spoofed and hasattr(self, f"on_{event}"):
            return await super().trigger_event(event, *args)
        log.info("unknown event %s from %s", shown(event, 64), sid)
        return protocol.ack_error("invalid_request", f"event: unknown event {shown(event, 64)}")

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        request = environ.get("aiohttp.request")
        peer = request.remote if request is not None else None
        forwarded = (
            ",".join(request.headers.getall("X-Forwarded-For", [])) if request is not None else None
        )
        ip = self.gate.address(peer, forwarded)
        try:
            who = await self.gate.identify(_token(auth))
        except AuthError as exc:
            log.info("connect from %s refused: %s", shown(ip), exc.reason)
            raise Refused(exc.reason, {"code": "unauthorized"}) from None
        try:
            held = await self.gate.quotas.connect(ip, sid)
        except StoreUnavailable:
            log.warning("connect from %s refused: the store is unavailable", shown(ip))
            raise Refused(
                "the server is unavailable; retry shortly", {"code": "store_unavailable"}
            ) from None
        if not held:
            log.info("connect from %s refused: too many connections", shown(ip))
            raise Refused("too many connections from your address", {"code": "rate_limited"})
        self.clients.add(sid, who, ip)
        self.sessions.connected(sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        client = self.clients.remove(sid)
        try:
            # By sid: also a hold taken by a connect still finishing when it left.
            await self.gate.quotas.disconnect(client.ip if client else None, sid)
        except StoreUnavailable as exc:
            # Forgotten here, so it is no longer renewed: it expires by itself.
            log.warning("socket %s: its connection hold was not released: %s", sid, exc)
        rooms = [r for r in self.rooms(sid) if r != sid]
        await self.sessions.disconnected(sid, rooms)

    async def _expired(self, sid: str) -> None:
        """The socket's token expired: say so, then disconnect it (the client refreshes
        its token, reconnects and resumes)."""
        log.info("socket %s: token expired, disconnecting", sid)
        await self.emit(protocol.AUTH_EXPIRED, protocol.auth_expired("token expired"), to=sid)
        await self.disconnect(sid)

    def _who(self, sid: str) -> Identity:
        client = self.clients.get(sid)
        if client is None:
            raise ChatsockError("unauthorized", "connect first")
        return client.who

    async def on_chat_stream(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            who = self._who(sid)
            request = parse(ChatStreamRequest, data)
            self.gate.policy.check(request)
            client = self.clients.get(sid)
            await self.gate.may_start(who, client.ip if client else None)
            session_id = request.session_id or new_id("ses")

            def admit() -> None:
                # Only an accepted request joins the room, and it joins before the
                # stream's first event can be sent (the runner calls this first).
                self.sessions.fanout.enter_room(sid, session_id, reasoning=request.reasoning)

            return await self.runner.start(request, session_id, who, admit=admit)

        return await _answer("chat_stream", sid, work)

    async def on_chat_regenerate(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            who = self._who(sid)
            request, regenerate = await prepare(self.sessions.store, data, who)
            self.gate.policy.check(request)
            client = self.clients.get(sid)
            await self.gate.may_start(who, client.ip if client else None)
            session_id = request.session_id or ""  # prepare() sets it

            def admit() -> None:
                # As chat_stream's: joins only once accepted, before the first event.
                self.sessions.fanout.enter_room(sid, session_id, reasoning=request.reasoning)

            return await self.runner.start(
                request, session_id, who, admit=admit, regenerate=regenerate
            )

        return await _answer("chat_regenerate", sid, work)

    async def on_chat_stop(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            who = self._who(sid)
            request = parse(StopRequest, data)
            return protocol.ack_ok(stopped=await self.sessions.stop(request.stream_id, who))

        return await _answer("chat_stop", sid, work)

    async def on_session_join(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            who = self._who(sid)
            request = parse(JoinRequest, data)
            catch_up = None
            if request.after is not None:
                catch_up = Cursor(request.after, request.after_reasoning, request.reasoning)
            messages, active = await self.sessions.join(
                sid, request.session_id, who, reasoning=request.reasoning, catch_up=catch_up
            )
            return protocol.ack_ok(
                session_id=request.session_id,
                messages=[protocol.message_view(m, reasoning=request.reasoning) for m in messages],
                active_stream=active,
            )

        return await _answer("session_join", sid, work)

    async def on_chat_resume(self, sid: str, data: Any = None, *_: Any) -> Any:
        async def work() -> protocol.Payload:
            who = self._who(sid)
            request = parse(ResumeRequest, data)
            after = Cursor(request.after, request.after_reasoning, request.reasoning)
            status = await self.sessions.resume_socket(
                sid, request.stream_id, after, who, request.epoch
            )
            return protocol.ack_ok(status=status)

        return await _answer("chat_resume", sid, work)
