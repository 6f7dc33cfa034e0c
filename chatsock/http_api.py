"""The HTTP API: the Socket.IO protocol's streams over SSE or JSON, plus health and metrics.

Handlers validate, delegate to the runner, the session service and the
fan-out, and answer; they hold no business logic (docs/http.md). Under
`/api/` every failure becomes `{"error": {"code", "message"}}` with an
honest status, in one middleware.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from chatsock import jsoncodec, protocol
from chatsock.config import Settings
from chatsock.cors import allow_origins
from chatsock.errors import ChatsockError
from chatsock.fanout import Cursor, Fanout, Listener
from chatsock.gate import Gate
from chatsock.identity import AuthError, Identity
from chatsock.ids import new_id
from chatsock.logsafe import shown
from chatsock.loops import BackgroundLoops
from chatsock.metrics import Metrics
from chatsock.regenerate import Regenerate, prepare
from chatsock.requests import (
    MAX_SEQ,
    ChatStreamRequest,
    JoinRequest,
    ResumeRequest,
    StopRequest,
    parse,
)
from chatsock.runner import StreamRunner
from chatsock.sessions import SessionService
from chatsock.sse import SSE_HEADERS, ClientGone, ClientNotReading, wait_terminal, write_events
from chatsock.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/"
STATUS_BY_CODE: Final = {
    "invalid_request": 400,
    "not_found": 404,
    "log_unavailable": 410,
    "stream_lost": 410,
    "too_many_streams": 429,
    "rate_limited": 429,
    "unauthorized": 401,
    "internal": 500,
    "provider_error": 502,
    "provider_unavailable": 503,
    "server_shutdown": 503,
    "store_unavailable": 503,
    "worker_lost": 503,
    "timeout": 504,
}
MAX_SESSIONS_LISTED: Final = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """An API error whose status is not implied by its code (413, 415, 405)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


IDENTITY = web.RequestKey("identity", Identity)
CLIENT_IP = web.RequestKey("client_ip", str)


def error_response(
    status: int,
    code: str,
    message: str,
    retry_after: float | None = None,
    *,
    retryable: bool = False,
) -> web.Response:
    body = protocol.error_body(code, message, retry_after, retryable=retryable)
    response = web.json_response(body, status=status, dumps=jsoncodec.dumps)
    if retry_after is not None:
        response.headers["Retry-After"] = str(protocol.retry_after_s(retry_after))
    if status == 401:
        response.headers["WWW-Authenticate"] = _bearer_challenge(message)
    return response


def _bearer_challenge(reason: str) -> str:
    detail = reason.replace("\\", "").replace('"', "'")
    return f'Bearer realm="chatsock", error="invalid_token", error_description="{detail}"'


def _bearer(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (None when absent)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed Authorization header: expected `Bearer <token>`")
    return token.strip()


def json_response(payload: protocol.Payload, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, dumps=jsoncodec.dumps)


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure under /api/ into a JSON error; other paths pass through."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    where = f"{request.method} {shown(request.path)}"
    try:
        return await handler(request)
    except ChatsockError as exc:
        log.info("%s rejected: %s: %s", where, exc.code, exc.message)
        status = STATUS_BY_CODE.get(exc.code, 500)
        return error_response(
            status, exc.code, exc.message, exc.retry_after, retryable=exc.retryable
        )
    except HttpError as exc:
        log.info("%s rejected: %s %s: %s", where, exc.status, exc.code, exc.message)
        return error_response(exc.status, exc.code, exc.message)
    except StoreUnavailable as exc:
        log.warning("%s: store unavailable: %s", where, exc)
        return error_response(
            503, "store_unavailable", "the store is unavailable; retry shortly", retryable=True
        )
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, "invalid_request", f"body: {exc.text}")
    except web.HTTPNotFound:
        return error_response(404, "not_found", "path: no such API route")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405, "invalid_request", f"method: {request.method} not allowed here (use {allowed})"
        )
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s failed", where)
        return error_response(500, "internal", f"{where} failed on the server; see its log")


async def read_json(request: web.Request, max_size: int) -> Any:
    """The request body as JSON; 415 for another content type, 413 beyond `max_size`."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HttpError(
            415,
            "invalid_request",
            f"Content-Type: expected application/json, got {ctype!r}; "
            "send a JSON object with Content-Type: application/json",
        )
    if request.content_length is not None and request.content_length > max_size:
        raise HttpError(
            413,
            "invalid_request",
            f"body: {request.content_length} bytes is more than http.client_max_size "
            f"({max_size} bytes)",
        )
    raw = await request.read()  # HTTPRequestEntityTooLarge past client_max_size
    if not raw.strip():
        raise ChatsockError("invalid_request", "body: empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ChatsockError("invalid_request", f"body: not valid JSON ({exc})") from None


def _non_negative(name: str, value: str, maximum: int = MAX_SEQ) -> int:
    text = value.strip()
    # Length first: int() refuses over 4300 digits (ValueError); a seq has at most 19.
    if (
        not text.isascii()
        or not text.isdigit()
        or len(text) > len(str(maximum))
        or int(text) > maximum
    ):
        raise ChatsockError(
            "invalid_request",
            f"{name}: expected an integer from 0 to {maximum}, got {value[:40]!r}",
        )
    return int(text)


def event_id(header: str, reasoning: bool) -> Cursor:
    """A `Last-Event-ID`: `<seq>`, or `<seq>.<reasoning seq>` as the SSE ids of a
    client that opted in to reasoning read (a client that did not keeps `<seq>`)."""
    text, dot, rest = header.strip().partition(".")
    after = _non_negative("Last-Event-ID", text)
    after_reasoning = _non_negative("Last-Event-ID", rest) if dot else 0
    return Cursor(after, after_reasoning if reasoning else 0, reasoning)


def resume_point(request: web.Request, reasoning: bool = False) -> Cursor:
    """Where a resume starts: `Last-Event-ID` (EventSource reconnects) wins over
    `?after` (and `?after_reasoning`)."""
    header = request.headers.get("Last-Event-ID", "")
    if header.strip():
        return event_id(header, reasoning)
    after = request.query.get("after")
    after_reasoning = request.query.get("after_reasoning") if reasoning else None
    return Cursor(
        0 if after is None else _non_negative("after", after),
        0 if after_reasoning is None else _non_negative("after_reasoning", after_reasoning),
        reasoning,
    )


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


def wants_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


class HttpApi:
    """The route handlers of one app, bound to its runner, session service and metrics."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runner: StreamRunner,
        fanout: Fanout,
        sessions: SessionService,
        metrics: Metrics,
        *,
        listeners: Callable[[], tuple[str | None, dict[str, float | None]]],
        loops: BackgroundLoops,
        gate: Gate,
        draining: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.gate = gate
        self.draining = draining
        self.store = store
        self.listener_problem = listeners
        self.loops = loops
        self.runner = runner
        self.fanout = fanout
        self.sessions = sessions
        self.metrics = metrics
        self.max_size = settings.http.client_max_size
        self.heartbeat_s = settings.http.sse_heartbeat_s
        self.write_timeout_s = settings.http.sse_write_timeout_s
        self.stop_on_disconnect = settings.stream.stop_on_disconnect
        self.cors_origins = settings.server.cors_allowed_origins

    def add_routes(
        self,
        app: web.Application,
        extra: Callable[[web.UrlDispatcher], list[web.AbstractRoute]] | None = None,
    ) -> None:
        """The /api/ routes, with `extra`'s (the AI SDK adapter's): errors, auth, CORS."""
        app.middlewares.append(api_errors)
        app.middlewares.append(self._authenticate)
        router = app.router
        api = [
            *(extra(router) if extra is not None else []),
            router.add_post("/api/chat/stream", self.start_stream),
            router.add_post("/api/chat/stream/stop", self.stop_stream),
            # Before /{stream_id}, which would otherwise match "active".
            router.add_get("/api/chat/stream/active", self.active_streams),
            router.add_get("/api/chat/stream/{stream_id}", self.follow_stream),
            router.add_get("/api/chat/sessions", self.list_sessions),
            router.add_get("/api/chat/sessions/{session_id}", self.get_session),
            router.add_delete("/api/chat/sessions/{session_id}", self.delete_session),
            router.add_post("/api/chat/sessions/{session_id}/regenerate", self.regenerate),
        ]
        allow_origins(app, self.cors_origins, api)
        router.add_get("/readyz", self.readyz)
        router.add_get("/metrics", self.metrics_text)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every /api/ request is made by an identity (401 without a valid token in
        the jwt mode); CORS preflights carry no credentials and pass."""
        if not request.path.startswith(API_PREFIX) or request.method == "OPTIONS":
            return await handler(request)
        peer = request.remote
        # Every X-Forwarded-For line, in order: a proxy may append its own line.
        ip = self.gate.address(peer, ",".join(request.headers.getall("X-Forwarded-For", [])))
        try:
            who = await self.gate.identify(_bearer(request))
        except AuthError as exc:
            log.info("%s %s from %s refused: %s", request.method, shown(request.path),
                     shown(ip), exc.reason)  # fmt: skip
            return error_response(401, "unauthorized", exc.reason)
        request[IDENTITY] = who
        request[CLIENT_IP] = ip or ""
        return await handler(request)

    # -- streams ------------------------------------------------------------
    async def start_stream(self, request: web.Request) -> web.StreamResponse:
        """`POST /api/chat/stream`: SSE for `Accept: text/event-stream`, else one JSON reply."""
        body = parse(ChatStreamRequest, await read_json(request, self.max_size))
        return await self._start(request, body)

    async def regenerate(self, request: web.Request) -> web.StreamResponse:
        """`POST /api/chat/sessions/{id}/regenerate`: a new reply to the session's last
        user message, replacing its reply; answered as `POST /api/chat/stream` is."""
        payload = await read_json(request, self.max_size)
        session_id = request.match_info["session_id"]
        body, regenerate = await prepare(self.store, payload, request[IDENTITY], session_id)
        return await self._start(request, body, regenerate)

    async def _start(
        self, request: web.Request, body: ChatStreamRequest, regenerate: Regenerate | None = None
    ) -> web.StreamResponse:
        """Start `body`'s stream and answer: SSE for `Accept: text/event-stream`, else
        one JSON reply."""
        who = request[IDENTITY]
        self.gate.policy.check(body)
        await self.gate.may_start(who, request[CLIENT_IP] or None)
        session_id = body.session_id or new_id("ses")
        # Read before the start, so a bad header starts nothing.
        last_id = request.headers.get("Last-Event-ID", "").strip()
        after = event_id(last_id, body.reasoning) if last_id else Cursor(reasoning=body.reasoning)
        listener = Listener(after)
        repeated: list[bool] = []
        ack = await self.runner.start(
            body, session_id, who, repeated=lambda: repeated.append(True), regenerate=regenerate
        )
        stream_id = ack["stream_id"]
        # No await since start(): the listener sees a new stream from chat_stream_start on.
        if repeated or not self.fanout.attach(stream_id, listener):
            # A retry (same client_message_id) gets the earlier stream, maybe midway:
            # replay it from seq 1, or after its Last-Event-ID, then follow it live.
            try:
                await self.sessions.resume_listener(listener, stream_id, after, who)
            except BaseException:
                self.fanout.detach(listener)
                raise
        headers = {
            "X-Stream-Id": stream_id,
            "X-Session-Id": ack["session_id"],
            "X-Message-Id": ack["message_id"],
        }
        if wants_sse(request):
            return await self._sse(request, listener, ack["session_id"], headers)
        return await self._json(request, listener, ack["session_id"], headers)

    async def follow_stream(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/chat/stream/{stream_id}`: replay after a seq, then follow live (SSE)."""
        after = resume_point(request, _flag(request, "reasoning"))
        asked: dict[str, object] = {"stream_id": request.match_info["stream_id"]}
        if "epoch" in request.query:
            asked["epoch"] = request.query["epoch"]
        resume = parse(ResumeRequest, asked)
        who = request[IDENTITY]
        record = await self.sessions.stream(resume.stream_id, who)
        listener = Listener(after)
        try:
            await self.sessions.resume_listener(
                listener, resume.stream_id, after, who, resume.epoch
            )
        except BaseException:
            self.fanout.detach(listener)
            raise
        headers = {"X-Stream-Id": record.stream_id, "X-Session-Id": record.session_id}
        return await self._sse(request, listener, record.session_id, headers)

    async def stop_stream(self, request: web.Request) -> web.StreamResponse:
        """`POST /api/chat/stream/stop`: `{ok: true, stopped}`, as `chat_stop` answers."""
        stop = parse(StopRequest, await read_json(request, self.max_size))
        stopped = await self.sessions.stop(stop.stream_id, request[IDENTITY])
        return json_response(protocol.ack_ok(stopped=stopped))

    async def active_streams(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/chat/stream/active[?session_id=][&all=1]`: the caller's streams
        still running (an admin's `all=1`: everyone's)."""
        who = request[IDENTITY]
        session_id = request.query.get("session_id")
        if session_id is not None:
            session_id = parse(JoinRequest, {"session_id": session_id}).session_id
            records = await self.store.active_streams(session_id)
            # Another user's session lists nothing, exactly as a missing one.
            records = [r for r in records if who.owns(r.user)]
        elif who.admin and _flag(request, "all"):
            records = await self.store.active_streams()
        else:
            records = await self.store.active_streams(user=who.user)
        return json_response(protocol.active_streams_view(records))

    # -- sessions -----------------------------------------------------------
    async def list_sessions(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/chat/sessions[?limit=N][&all=1]`: the caller's sessions (an
        admin's `all=1`: everyone's), most recently updated first."""
        who = request[IDENTITY]
        owner = None if who.admin and _flag(request, "all") else who.user
        raw = request.query.get("limit")
        limit = 100 if raw is None else _non_negative("limit", raw)
        if not 1 <= limit <= MAX_SESSIONS_LISTED:
            raise ChatsockError(
                "invalid_request", f"limit: expected 1 to {MAX_SESSIONS_LISTED}, got {limit}"
            )
        summaries = [
            protocol.session_summary(info, await self.store.count_messages(info.session_id))
            for info in await self.store.list_sessions(limit, owner=owner)
        ]
        return json_response(protocol.sessions_view(summaries))

    async def get_session(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/chat/sessions/{id}`: messages and the active stream."""
        session_id = self._session_id(request)
        info = await self.sessions.session(session_id, request[IDENTITY])
        messages = await self.store.get_messages(session_id)
        active = await self.store.active_streams(session_id)
        reasoning = _flag(request, "reasoning")
        record = active[0] if active else None
        seen = record.reasoning_seq if record is not None and reasoning else None
        view = protocol.active_stream_view(record, reasoning_seq=seen)
        return json_response(protocol.session_view(info, messages, view, reasoning=reasoning))

    async def delete_session(self, request: web.Request) -> web.StreamResponse:
        """`DELETE /api/chat/sessions/{id}`: stop its streams, delete it."""
        await self.sessions.delete(self._session_id(request), request[IDENTITY])
        return json_response(protocol.ack_ok())

    @staticmethod
    def _session_id(request: web.Request) -> str:
        return parse(JoinRequest, {"session_id": request.match_info["session_id"]}).session_id

    # -- health and metrics ---------------------------------------------------
    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """200 when the store answers a ping, no background loop keeps failing and the
        pub/sub listeners hear, else 503 (at once when the worker drains); the body
        always lists the background loops."""
        statuses = self.loops.status()
        loops = {
            name: protocol.loop_status(s.state, s.failures, s.last_error)
            for name, s in statuses.items()
        }
        draining = self.draining()
        if draining is not None:  # a rolling deploy: the load balancer sends no one here
            body = protocol.readiness(draining, loops=loops, status="draining")
            return json_response(body, status=503)
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            return json_response(protocol.readiness(str(exc), loops=loops), status=503)
        failing = [name for name, s in statuses.items() if s.state == "failing"]
        problem, heard = self.listener_problem()
        if failing:
            last = statuses[failing[0]].last_error
            problem = (
                f"background loop {failing[0]!r} keeps failing ({last}); it is being "
                "restarted, see the worker log for its traceback"
            )
        if problem is not None:
            return json_response(protocol.readiness(problem, heard, loops=loops), status=503)
        return json_response(protocol.readiness(None, heard, loops=loops))

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # -- writing a followed stream --------------------------------------------
    async def _sse(
        self,
        request: web.Request,
        listener: Listener,
        session_id: str,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
        finished = False
        self.metrics.sse_followers.inc()
        try:
            await response.prepare(request)
            await write_events(
                request,
                response,
                listener,
                heartbeat_s=self.heartbeat_s,
                watch_disconnect=self.stop_on_disconnect,
                write_timeout_s=self.write_timeout_s,
            )
            finished = True
        except ClientNotReading:
            log.info("stream follower on %s does not read: a write waited over %g s "
                     "(http.sse_write_timeout_s); closed", shown(session_id),
                     self.write_timeout_s)  # fmt: skip
            self.metrics.slow_clients_dropped.labels("sse").inc()
        except ClientGone:
            log.info("stream follower on %s disconnected", session_id)
        except Exception:
            if not response.prepared:
                raise  # the middleware answers with a JSON error
            log.exception("SSE response on %s failed; ending it", session_id)
        finally:
            await self._leave(listener, session_id, finished)
        return response

    async def _json(
        self,
        request: web.Request,
        listener: Listener,
        session_id: str,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        finished = False
        reasoning: list[str] | None = [] if listener.reasoning else None
        self.metrics.sse_followers.inc()
        try:
            event, payload = await wait_terminal(
                request, listener, watch_disconnect=self.stop_on_disconnect, reasoning=reasoning
            )
            finished = True
        except ClientGone:
            log.info("JSON client on %s disconnected", session_id)
            return web.Response(status=499, headers=headers)  # nobody reads it
        finally:
            await self._leave(listener, session_id, finished)
        if event == protocol.COMPLETE:
            if reasoning is not None:  # opted in: the reasoning, apart from the text
                payload = {**payload, "reasoning": "".join(reasoning)}
            response = json_response(payload)
        else:
            status = STATUS_BY_CODE.get(payload["code"], 500)
            response = json_response(protocol.stream_error_body(payload), status=status)
        response.headers.update(headers)
        return response

    async def _leave(self, listener: Listener, session_id: str, finished: bool) -> None:
        """Detach; a follower that left before the end may stop the stream."""
        self.fanout.detach(listener)
        self.metrics.sse_followers.dec()
        if not finished:
            await self.sessions.follower_left(session_id)
