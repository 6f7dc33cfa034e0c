"""The Vercel AI SDK adapter: `useChat` (AI SDK 5 and later) talks to chatsock unchanged.

`POST /api/aisdk/chat` takes useChat's body (`{id, messages, trigger, messageId}`):
the chat `id` is the chatsock session, the last user message's text is the
message. The history is the client's earlier messages where
`limits.allow_client_history` allows it, else (or when only the new message is
sent) the stored session's. The answer is the AI SDK's UI message
stream: SSE with `x-vercel-ai-ui-message-stream: v1`, one JSON chunk per `data:`
line (`start`, `text-start`, `text-delta`, `text-end`, then `finish` or
`error`), then `data: [DONE]`.

`trigger: "regenerate-message"` on a stored chat is chatsock's regenerate: a
new version of the last reply, under its message id (docs/protocol.md).

`GET /api/aisdk/chat/{id}/stream` is `useChat({resume: true})`: the session's
active reply from its start (the UI message stream has no Last-Event-ID: the
client's transport replaces the message it has with the replay), then live;
204 when no reply is active.

useChat's `stop()` only aborts the fetch, and a dropped connection looks the
same to the server. So a response whose client leaves before the end stops its
stream through chatsock's stop (on whichever worker runs it) after
`http.aisdk_resume_grace_s`, unless the chat was resumed meanwhile, here or on
another worker (a resume marks the session present in the store).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated, Any, Final, Literal

import orjson
from aiohttp import web
from pydantic import Field, StringConstraints

from chatsock import protocol
from chatsock.config import Settings
from chatsock.errors import ChatsockError
from chatsock.fanout import Cursor, Fanout, Listener
from chatsock.gate import Gate
from chatsock.http_api import CLIENT_IP, IDENTITY, read_json
from chatsock.identity import Identity
from chatsock.logsafe import shown
from chatsock.metrics import Metrics
from chatsock.policy import prompt_chars, trim_history
from chatsock.protocol import Payload
from chatsock.providers.base import ChatMessage
from chatsock.regenerate import Regenerate, prepare
from chatsock.requests import ChatStreamRequest, SessionId, parse
from chatsock.requests import _Request as _Body  # strict, extra fields ignored
from chatsock.runner import StreamRunner
from chatsock.sessions import SessionService
from chatsock.sse import DISCONNECT_POLL_S, TERMINAL_EVENTS, ClientGone, client_gone
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import StreamRecord
from chatsock.timing import PRESENCE_TTL_S

log = logging.getLogger(__name__)

HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}
KEEP_ALIVE: Final = b": keep-alive\n\n"
DONE: Final = b"data: [DONE]\n\n"
# chatsock's finish_reason -> the AI SDK's (anything else is "other").
FINISH_REASONS: Final = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
}
# Options a DefaultChatTransport `body` may add, checked as chat_stream's fields.
PASSED_OPTIONS: Final = ("provider", "model", "temperature", "max_tokens", "system_prompt")


# -- what useChat sends ---------------------------------------------------------
class UIPart(_Body):
    type: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    text: str | None = None


class UIMessage(_Body):
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart]

    def text(self) -> str:
        return "".join(part.text or "" for part in self.parts if part.type == "text")


class UseChatRequest(_Body):
    """useChat's POST body (DefaultChatTransport)."""

    id: SessionId
    messages: Annotated[list[UIMessage], Field(min_length=1)]
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: Annotated[str, StringConstraints(max_length=128)] | None = None


class ChatPath(_Body):
    id: SessionId


def chat_request(
    body: UseChatRequest, raw: dict[str, Any], settings: Settings
) -> ChatStreamRequest:
    """The `chat_stream` request a useChat POST stands for; `invalid_request` naming
    the useChat field at fault."""
    last_at = len(body.messages) - 1
    last = body.messages[last_at]
    if last.role != "user":
        raise ChatsockError(
            "invalid_request",
            f"messages.{last_at}.role: the last message must be the user's, got {last.role!r}",
        )
    text = last.text()
    if not text:
        raise ChatsockError(
            "invalid_request", f"messages.{last_at}.parts: the last message has no text part"
        )
    fields: dict[str, Any] = {key: raw[key] for key in PASSED_OPTIONS if key in raw}
    fields.update(message=text, session_id=body.id)
    if body.trigger == "submit-message" and body.messageId is None:
        # useChat's message id: a retried POST of the same message replays its reply
        # (an edit, `messageId` set, and a regenerate ask for a new one).
        fields["client_message_id"] = last.id
    request = parse(ChatStreamRequest, fields)
    limits = settings.limits
    # The client's own history where the policy allows it; a body holding only the
    # new message (the AI SDK's advice when the server stores the chat) gets the
    # stored session's.
    if not (limits.allow_client_history and last_at > 0):
        return request
    turns = [
        ChatMessage(m.role, m.text())
        for m in body.messages[:last_at]
        if m.role != "system" and m.text()
    ]
    kept = limits.max_history_messages
    # Bounded as stored history is: a long chat keeps its newest turns, never refused.
    turns = trim_history(
        turns[len(turns) - kept :] if kept else [], limits.max_prompt_chars - prompt_chars(request)
    )
    history = [{"role": m.role, "content": m.content} for m in turns]
    return parse(ChatStreamRequest, {**fields, "history": history})


# -- what useChat reads -------------------------------------------------------------
def _chunk(chunk: Payload) -> bytes:
    return b"data: %s\n\n" % orjson.dumps(chunk)


# useChat shows reasoning as the AI SDK streams it (its `sendReasoning` default):
# every reply is followed from its start, reasoning included.
EVERYTHING = Cursor(reasoning=True)


def start_chunks(record_ids: Payload) -> bytes:
    """`start`, with chatsock's message id, so a resume replaces the same message."""
    message_id = str(record_ids["message_id"])
    metadata = {"stream_id": record_ids["stream_id"], "session_id": record_ids["session_id"]}
    return _chunk({"type": "start", "messageId": message_id, "messageMetadata": metadata})


class Parts:
    """The reply's parts as useChat builds them: a `reasoning` part while the model
    reasons (the UI message stream's reasoning-start/-delta/-end), then its
    `text` part, each opened by its first delta, so they appear in that order."""

    def __init__(self, message_id: str) -> None:
        self.text_id = f"{message_id}-text"
        self.reasoning_id = f"{message_id}-reasoning"
        self.text_open = False
        self.reasoning_open = False

    def _open_text(self) -> bytes:
        if self.text_open:
            return b""
        self.text_open = True
        return self._end_reasoning() + _chunk({"type": "text-start", "id": self.text_id})

    def _end_reasoning(self) -> bytes:
        if not self.reasoning_open:
            return b""
        self.reasoning_open = False
        return _chunk({"type": "reasoning-end", "id": self.reasoning_id})

    def chunks(self, event: str, payload: Payload) -> bytes:
        """One chatsock stream event as UI message stream chunks (nothing for others)."""
        if event == protocol.TOKEN:
            delta = {"type": "text-delta", "id": self.text_id, "delta": payload["token"]}
            return self._open_text() + _chunk(delta)
        if event == protocol.REASONING:
            opened = b""
            if not self.reasoning_open:
                self.reasoning_open = True
                opened = _chunk({"type": "reasoning-start", "id": self.reasoning_id})
            delta = {
                "type": "reasoning-delta",
                "id": self.reasoning_id,
                "delta": payload["reasoning"],
            }
            return opened + _chunk(delta)
        if event == protocol.COMPLETE:
            metadata = {
                key: payload.get(key)
                for key in ("stream_id", "stopped", "finish_reason", "provider", "model", "usage")
            }
            reason = FINISH_REASONS.get(str(payload.get("finish_reason")), "other")
            finish = {"type": "finish", "finishReason": reason, "messageMetadata": metadata}
            return self._close() + _chunk(finish) + DONE
        if event == protocol.STREAM_ERROR:
            error = {"type": "error", "errorText": f"{payload['code']}: {payload['error']}"}
            return self._close() + _chunk(error) + DONE
        return b""

    def _close(self) -> bytes:
        return self._open_text() + _chunk({"type": "text-end", "id": self.text_id})


class AiSdkChat:
    """The useChat routes, over the runner, the fan-out and the session service."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runner: StreamRunner,
        fanout: Fanout,
        sessions: SessionService,
        gate: Gate,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.fanout = fanout
        self.sessions = sessions
        self.gate = gate
        self.metrics = metrics
        self.grace_s = settings.http.aisdk_resume_grace_s

    def add_routes(self, router: web.UrlDispatcher) -> list[web.AbstractRoute]:
        """Add the routes; return them (the HTTP API adds its CORS to them)."""
        return [
            router.add_post("/api/aisdk/chat", self.chat),
            router.add_get("/api/aisdk/chat/{id}/stream", self.resume),
        ]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """`POST /api/aisdk/chat`: start the reply to the last user message."""
        who = request[IDENTITY]
        raw = await read_json(request, self.settings.http.client_max_size)
        body = parse(UseChatRequest, raw)
        regenerate: Regenerate | None = None
        if body.trigger == "regenerate-message" and await self.store.get_session(body.id):
            # useChat's regenerate of a stored chat: a new version of its last reply.
            asked = {key: raw[key] for key in PASSED_OPTIONS if key in raw}
            if body.messageId:
                asked["message_id"] = body.messageId
            wanted, regenerate = await prepare(self.store, asked, who, body.id)
        else:
            wanted = chat_request(body, raw, self.settings)
        self.gate.policy.check(wanted)
        await self.gate.may_start(who, request[CLIENT_IP] or None)
        listener = Listener(EVERYTHING)
        repeated: list[bool] = []
        ack = await self.runner.start(
            wanted, body.id, who, repeated=lambda: repeated.append(True), regenerate=regenerate
        )
        # No await since start(): a new stream reaches the listener from its first event.
        if repeated or not self.fanout.attach(ack["stream_id"], listener):
            # The same useChat message posted again: its reply from the start.
            record = await self.sessions.stream(ack["stream_id"], who)
            await self._replay(listener, record, who)
        return await self._respond(request, listener, ack, who)

    async def resume(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/aisdk/chat/{id}/stream`: the active reply from its start, then
        live; 204 when the chat has none (or is unknown, or another user's)."""
        who = request[IDENTITY]
        session_id = parse(ChatPath, {"id": request.match_info["id"]}).id
        info = await self.store.get_session(session_id)
        if info is None or not who.owns(info.owner):
            return web.Response(status=204)
        active = await self.store.active_streams(session_id)
        if not active:
            return web.Response(status=204)
        record = active[0]
        if self.store.shared:
            # Seen by a worker whose useChat client left: do not stop, it is back.
            ttl = PRESENCE_TTL_S + math.ceil(self.grace_s)
            await self.store.mark_present(session_id, self.runner.worker_id, ttl)
        listener = Listener(EVERYTHING)
        await self._replay(listener, record, who)
        ids = {
            "stream_id": record.stream_id,
            "session_id": record.session_id,
            "message_id": record.message_id,
        }
        return await self._respond(request, listener, ids, who)

    async def _replay(self, listener: Listener, record: StreamRecord, who: Identity) -> None:
        try:
            await self.sessions.resume_listener(listener, record.stream_id, EVERYTHING, who)
        except BaseException:
            self.fanout.detach(listener)
            raise

    # -- writing the UI message stream ------------------------------------------
    async def _respond(
        self, request: web.Request, listener: Listener, ids: Payload, who: Identity
    ) -> web.StreamResponse:
        session_id = str(ids["session_id"])
        stream_id = str(ids["stream_id"])
        headers = {**HEADERS, "X-Stream-Id": stream_id, "X-Session-Id": session_id}
        response = web.StreamResponse(headers=headers)
        finished = False
        self.metrics.sse_followers.inc()
        try:
            await response.prepare(request)
            await self._write(request, response, start_chunks(ids))
            await self._pipe(request, response, listener, str(ids["message_id"]))
            finished = True
        except ClientGone:
            log.info("useChat client on %s left before the end", shown(session_id))
        except Exception:
            if not response.prepared:
                raise  # the middleware answers with a JSON error
            log.exception("useChat response on %s failed; ending it", shown(session_id))
        finally:
            self.fanout.detach(listener)
            self.metrics.sse_followers.dec()
            await self._left(session_id, stream_id, who, finished)
        return response

    async def _pipe(
        self,
        request: web.Request,
        response: web.StreamResponse,
        listener: Listener,
        message_id: str,
    ) -> None:
        """Write the listener's events as chunks until the terminal one."""
        queue = listener.queue
        parts = Parts(message_id)
        loop = asyncio.get_running_loop()
        heartbeat_s = self.settings.http.sse_heartbeat_s
        next_ping = loop.time() + heartbeat_s
        while True:
            try:
                async with asyncio.timeout(DISCONNECT_POLL_S):
                    event, payload = await queue.get()
            except TimeoutError:
                if client_gone(request):
                    raise ClientGone from None
                if loop.time() >= next_ping:
                    await self._write(request, response, KEEP_ALIVE)
                    next_ping = loop.time() + heartbeat_s
                continue
            chunks = [parts.chunks(event, payload)]
            done = event in TERMINAL_EVENTS
            while not done and not queue.empty():
                event, payload = queue.get_nowait()
                chunks.append(parts.chunks(event, payload))
                done = event in TERMINAL_EVENTS
            await self._write(request, response, b"".join(chunks))
            if done:
                return
            next_ping = loop.time() + heartbeat_s

    async def _write(self, request: web.Request, response: web.StreamResponse, data: bytes) -> None:
        if not data:
            return
        try:
            async with asyncio.timeout(self.settings.http.sse_write_timeout_s):
                await response.write(data)
        except TimeoutError:
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise ClientGone from None
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError subclasses it
            raise ClientGone from None

    # -- a client that left -------------------------------------------------------
    async def _left(self, session_id: str, stream_id: str, who: Identity, finished: bool) -> None:
        """A response ended: unmark this worker's presence when it had the last
        follower; a client that left early stops the stream unless the chat is
        resumed within the grace."""
        worker = self.runner.worker_id
        try:
            if self.store.shared and self.fanout.listener_count(session_id) == 0:
                await self.store.clear_present(session_id, worker)
            if finished:
                return
            await self.sessions.follower_left(session_id)
            if self.grace_s:
                await asyncio.sleep(self.grace_s)
            feed = self.fanout.feeds.get(stream_id)
            if feed is not None and feed.listeners:
                return  # resumed on this worker
            if self.store.shared and await self.store.present_elsewhere(session_id, worker):
                return  # resumed on another one
            if await self.sessions.stop(stream_id, who):
                log.info("stream %s: its useChat client left; stopped", stream_id)
        except ChatsockError as exc:  # the stream or session is gone meanwhile
            log.info("stream %s: not stopped after its useChat client left: %s", stream_id, exc)
        except StoreUnavailable as exc:
            log.warning("stream %s: not stopped after its useChat client left: %s", stream_id, exc)
