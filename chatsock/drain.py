"""The drain: what a worker does between SIGTERM and its shutdown proper.

A rolling deploy stops workers one at a time. A draining worker takes no new
stream (`chat_stream` and `POST /api/chat/stream` answer `server_shutdown`,
retryable), says so on `/readyz` (503, `draining`), and keeps generating the
streams it runs, up to `server.drain_timeout_s`.

With a shared store it also hands its clients off: each socket is sent
`server_draining`, then closed at the Engine.IO level, so socket.io-client
reconnects (through the load balancer, to another worker: this one refuses
new handshakes with 503) and `chat_resume`s each stream from its last seq.
The tokens this worker still generates reach them through the token log, and
the replies are persisted as usual. With the memory store nobody else can
serve its sessions, so it keeps its clients and only waits for its streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import socketio
from aiohttp import web
from aiohttp.typedefs import Handler

from chatsock import protocol
from chatsock.http_api import error_response
from chatsock.runner import StreamRunner
from chatsock.sessions import SessionService

log = logging.getLogger(__name__)

DRAINING = "the worker is draining: it finishes its streams and takes no new ones"
# How often a draining worker hands off sockets whose handshake raced the drain.
HAND_OFF_EVERY_S = 0.25
ENGINEIO_PATH = "/socket.io/"


class Drain:
    """This worker's drain; `reason` is None until it starts."""

    def __init__(
        self,
        runner: StreamRunner,
        sessions: SessionService,
        sio: socketio.AsyncServer,
        *,
        shared: bool,
        timeout_s: float,
    ) -> None:
        self._runner = runner
        self._sessions = sessions
        self._sio = sio
        self.shared = shared
        self.timeout_s = timeout_s
        self.reason: str | None = None
        self.handed_off = 0

    def begin(self) -> None:
        """Refuse new streams and say so on /readyz; idempotent."""
        if self.reason is None:
            self.reason = DRAINING
            self._runner.refuse_new()
            # Clients leave only to come back elsewhere: nothing is stopped for
            # lack of a follower while they do.
            self._sessions.stop_on_disconnect = False

    async def run(self) -> bool:
        """Drain for up to `timeout_s`; whether every stream ended by itself."""
        self.begin()
        log.info(
            "draining: %d streams running, %d sockets connected, for up to %gs",
            len(self._runner.streams),
            len(self._sio.eio.sockets),
            self.timeout_s,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        idle = False
        while not idle:
            if self.shared:
                await self._hand_off()
            left = deadline - loop.time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, HAND_OFF_EVERY_S)):
                    await self._runner.idle()
                    idle = True
        if idle:
            log.info("drained: every stream ended (%d sockets handed off)", self.handed_off)
        else:
            log.warning(
                "drain timed out after %gs with %d streams running; they end with server_shutdown",
                self.timeout_s,
                len(self._runner.streams),
            )
        return idle

    async def _hand_off(self) -> None:
        """Tell every socket of this worker to go elsewhere, then close it."""
        sockets = list(self._sio.eio.sockets.values())
        if not sockets:
            return
        # Local sockets only (not through the Redis manager): they are this worker's.
        await self._sio.emit(
            protocol.SERVER_DRAINING,
            protocol.server_draining(DRAINING),
            namespace="/",
            ignore_queue=True,
        )
        for eio_socket in sockets:
            if eio_socket.closed or eio_socket.closing:
                continue
            # An Engine.IO-level close, queued behind server_draining, so
            # socket.io-client reconnects. wait=False: never await a peer.
            await eio_socket.close(wait=False, reason=self._sio.eio.reason.SERVER_DISCONNECT)
            self.handed_off += 1

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """While draining with a shared store, a new Engine.IO handshake is refused
        with 503, so the client (or nginx's proxy_next_upstream) tries another worker;
        requests of sockets already connected go on."""
        if self.reason is not None and self.shared and request.path == ENGINEIO_PATH:
            sid = request.query.get("sid")
            # A new handshake, or a poll of a socket this worker already handed off
            # (it would get "Invalid session" here): the load balancer retries
            # either on another worker.
            if sid is None or sid not in self._sio.eio.sockets:
                return error_response(503, "server_shutdown", DRAINING, retry_after=1.0)
        return await handler(request)
