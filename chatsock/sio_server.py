"""The Socket.IO server a worker runs: python-socketio's, refusing what chatsock never uses.

chatsock's protocol is JSON text only, so a binary packet, a binary attachment
or a binary Engine.IO message is refused outright: the connection is closed
before anything is buffered. A malformed packet closes its connection too,
with one log line and no traceback (python-socketio raises on it, and
Engine.IO logs every such exception with its traceback, twice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, NoReturn
from urllib.parse import parse_qs

import engineio
import socketio
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http import WebSocketError
from engineio import exceptions as eio_exceptions
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket
from engineio.payload import Payload
from socketio import packet as sio_packet

from chatsock.logsafe import shown
from chatsock.send_queue import SendLimits, SendQueue

log = logging.getLogger(__name__)

BINARY = "binary packets are not accepted"
TOO_LARGE = "too large"
MAX_NAMESPACE_CHARS = 128
# The close a peer that does not read gets, if it ever reads again: 1013 "try
# again later", so socket.io-client reconnects (and the app resumes).
NOT_READING = "not reading: send queue full"
_SHOWN_PACKET_CHARS = 64
# Engine.IO packet types a client sends: CLOSE, PING (the upgrade probe), PONG,
# MESSAGE, UPGRADE. Polling takes no PING or UPGRADE: Engine.IO answers those
# with a disconnect that waits for the client to poll again.
_WEBSOCKET_TYPES = frozenset("12345")
_POLLING_TYPES = frozenset("1345")
_CLIENT_PACKETS = (sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT, sio_packet.ACK)


def engineio_problem(frame: str, types: frozenset[str] = _WEBSOCKET_TYPES) -> str | None:
    """Why a text Engine.IO packet is refused, or None."""
    if not frame:
        return "empty Engine.IO packet"
    if frame[0] == "b":
        return BINARY  # a base64 binary message
    if frame[0] not in types:
        return "not an Engine.IO packet a client sends"
    return None


def socketio_problem(data: object, packet_class: type[sio_packet.Packet]) -> str | None:
    """Why the content of an Engine.IO message is refused as a Socket.IO packet, or None."""
    if not isinstance(data, str):
        return BINARY
    try:
        pkt = packet_class(encoded_packet=data)
    except ValueError as exc:  # a bad type, id or attachment count; invalid JSON
        return f"undecodable Socket.IO packet ({type(exc).__name__})"
    if pkt.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
        return BINARY
    if pkt.packet_type not in _CLIENT_PACKETS:
        return "not a Socket.IO packet a client sends"
    if pkt.namespace is not None and len(pkt.namespace) > MAX_NAMESPACE_CHARS:
        return "namespace too long"
    if pkt.packet_type == sio_packet.EVENT and not (
        isinstance(pkt.data, list) and pkt.data and isinstance(pkt.data[0], str)
    ):
        return "an event must be a list that starts with its name"
    if pkt.packet_type == sio_packet.ACK and not isinstance(pkt.data, list):
        return "an ack must carry a list"
    return None


def _peer(environ: dict[str, Any] | None) -> str:
    request = (environ or {}).get("aiohttp.request")
    remote = request.remote if isinstance(request, web.BaseRequest) else None
    return shown(remote or "unknown")


def _refused(who: str, environ: dict[str, Any] | None, problem: str, data: object) -> None:
    """The one log line for a refused connection.

    `who` is "socket <sid>" once it has connected to a namespace (the sid chatsock's
    other lines use), else "connection <eio sid>". A refusal by policy (binary, too
    large: `data` None) is INFO; a malformed packet is a WARNING that quotes it."""
    if problem == BINARY or data is None:
        log.info("%s from %s refused: %s; disconnected", who, _peer(environ), problem)
    else:
        log.warning(
            "%s from %s refused: %s: %s; disconnected",
            who,
            _peer(environ),
            problem,
            shown(data, _SHOWN_PACKET_CHARS),
        )


async def _drop(socket: AsyncSocket | None) -> None:
    """Close an Engine.IO socket now, whatever its transport.

    `close(wait=False)`: a peer that does not read would never drain the queue.
    The `None` ends the writer, which closes the WebSocket (or ends the pending
    poll), so the read side does not linger until the ping timeout.
    """
    if socket is None or socket.closed:
        return
    await socket.close(wait=False, reason=socket.server.reason.SERVER_DISCONNECT)
    await socket.queue.put(None)


class _GuardedWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """Engine.IO's aiohttp WebSocket, handing Engine.IO only well-formed text frames,
    and without permessage-deflate.

    Compression is off: chatsock's frames are a few dozen bytes, where deflate
    saves little and costs CPU per frame plus a compressor and a decompressor
    (hundreds of KB of zlib state) per connection. Engine.IO's driver offers no
    option for it, hence `__call__` here: the driver's, with `compress=False`."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False
        )
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock

    async def send(self, message: str | bytes) -> None:
        """Engine.IO's write, bounded: a peer that does not read is dropped after
        `server.send_timeout_s`, so its writer never waits forever on a drain."""
        try:
            async with asyncio.timeout(self.server.send_limits.timeout_s):
                await super().send(message)
        except TimeoutError:
            socket = self._socket()
            if socket is not None:
                timeout = self.server.send_limits.timeout_s
                self.server.not_reading(socket, f"a write waited over {timeout:g} s "
                                        "(server.send_timeout_s)")  # fmt: skip
            self._abort()
            raise OSError("the peer does not read") from None

    async def close(self) -> None:
        """Engine.IO's close, bounded by `server.send_timeout_s` (then the transport is
        aborted): it never awaits an unresponsive peer. A peer dropped for not reading
        gets 1013, should it read again."""
        socket = self._socket()
        slow = socket is not None and socket.not_reading
        code = WSCloseCode.TRY_AGAIN_LATER if slow else WSCloseCode.OK
        try:
            async with asyncio.timeout(self.server.send_limits.timeout_s):
                await self._sock.close(code=code, message=NOT_READING.encode() if slow else b"")
        except TimeoutError:
            self._abort()

    def _socket(self) -> _LeanSocket | None:
        socket = getattr(self.handler, "__self__", None)  # the bound `_websocket_handler`
        return socket if isinstance(socket, _LeanSocket) else None

    def _abort(self) -> None:
        """Drop the connection now, whatever is still buffered for it."""
        transport = self.environ["aiohttp.request"].transport
        if transport is not None:
            transport.abort()

    async def wait(self) -> str:
        msg = await self._sock.receive()
        if msg.type == WSMsgType.TEXT:
            problem = engineio_problem(msg.data)
            if problem is None:
                return str(msg.data)
            await self._refuse(problem, msg.data)
        elif msg.type == WSMsgType.BINARY:
            await self._refuse(BINARY, None)
        elif isinstance(msg.data, WebSocketError) and msg.data.code == WSCloseCode.MESSAGE_TOO_BIG:
            await self._refuse(TOO_LARGE, None)
        # Engine.IO reads OSError as "the connection is gone" and closes the socket.
        raise OSError

    async def _refuse(self, problem: str, data: object) -> None:
        socket = getattr(self.handler, "__self__", None)  # the bound `_websocket_handler`
        if not isinstance(socket, AsyncSocket) or socket.closed or socket.closing:
            return  # already refused, or closing anyway: one line per connection
        if problem == TOO_LARGE:
            limit = self.server.max_http_buffer_size
            problem = f"a WebSocket message over {limit} bytes (http.client_max_size)"
        _refused(f"connection {socket.sid}", self.environ, problem, data)
        # Engine.IO closes the socket itself after OSError, except during an upgrade
        # from polling, which it would just abandon.
        await _drop(socket)


class _LeanSocket(AsyncSocket):  # type: ignore[misc]
    """Engine.IO's socket, its writer waiting for packets without a task per wait,
    and its send queue bounded.

    Engine.IO's `poll()` waits with `asyncio.wait_for`, which on Python 3.11
    wraps the queue read in a new task for every packet a socket sends (every
    `chat_token`), and keeps one alive per idle socket. Same behaviour here with
    `asyncio.timeout`; the rest is Engine.IO's own. ChatsockServer gives every
    new socket this class.

    A packet that finds `server.max_send_queue` packets (or
    `max_send_queue_bytes`) already queued disconnects the socket instead: the
    queue is emptied and nothing more is queued (send_queue.py)."""

    # Set once the socket is dropped for not reading (a class default: Engine.IO
    # builds the socket as an AsyncSocket and ChatsockServer swaps its class).
    not_reading = False

    async def send(self, pkt: Any) -> None:
        if self.not_reading:
            return  # being disconnected: the packet would only wait in memory
        queue = self.queue
        limits = self.server.send_limits
        if isinstance(queue, SendQueue) and queue.over(limits):
            self.server.not_reading(
                self,
                f"{queue.qsize()} packets ({queue.bytes} bytes) queued, the most "
                f"server.max_send_queue ({limits.packets}) and "
                f"server.max_send_queue_bytes ({limits.bytes}) allow",
            )
            queue.discard()
            self.server.spawn(self._drop_not_reading())
            return
        await super().send(pkt)

    async def _drop_not_reading(self) -> None:
        # No CLOSE packet (abort=True): it would wait behind what the peer does not read.
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)
        await self.queue.put(None)  # ends the writer (or the pending poll)

    async def poll(self) -> list[Any]:
        queue = self.queue
        try:
            if queue.empty():
                async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                    packets = [await queue.get()]
            else:
                packets = [queue.get_nowait()]
            queue.task_done()
        except (TimeoutError, asyncio.CancelledError):
            raise eio_exceptions.QueueEmpty() from None
        if packets == [None]:
            return []
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets


class _CheckedBody:
    """A long-polling POST body, read for Engine.IO and checked first."""

    def __init__(self, server: engineio.AsyncServer, request: web.BaseRequest) -> None:
        self.server = server
        self.request = request
        self.too_large = (request.content_length or 0) > server.max_http_buffer_size

    async def read(self, length: int) -> bytes:
        if self.too_large:
            limit = self.server.max_http_buffer_size
            await self._refuse(f"a polling payload over {limit} bytes (http.client_max_size)", None)
        body = bytearray()
        while len(body) < length:  # StreamReader.read(n) returns what has arrived
            chunk = await self.request.content.read(length - len(body))
            if not chunk:
                break
            body += chunk
        problem = self._problem(bytes(body))
        if problem is not None:
            await self._refuse(problem, body.decode(errors="replace"))
        return bytes(body)

    async def _refuse(self, problem: str, data: str | None) -> NoReturn:
        sid = (parse_qs(self.request.query_string).get("sid") or [""])[0]
        socket = self.server.sockets.get(sid)
        who = f"connection {socket.sid if socket else shown(sid, _SHOWN_PACKET_CHARS)}"
        _refused(who, {"aiohttp.request": self.request}, problem, data)
        await _drop(socket)
        # Engine.IO answers this with 400 and forgets the (already closed) socket.
        raise eio_exceptions.EngineIOError(problem)

    @staticmethod
    def _problem(body: bytes) -> str | None:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return "a polling payload that is not UTF-8"
        if not text:
            return None
        frames = text.split("\x1e")
        if len(frames) > Payload.max_decode_packets:
            return "too many packets in one polling payload"
        for frame in frames:
            problem = engineio_problem(frame, _POLLING_TYPES)
            if problem is not None:
                return problem
        return None


class ChatsockEngine(engineio.AsyncServer):  # type: ignore[misc]
    """Engine.IO's server, its aiohttp driver guarded (`_GuardedWebSocket`, `_CheckedBody`),
    each socket's send queue bounded by `send_limits`."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.send_limits = SendLimits()
        # Set by ChatsockServer: names a connection in a log line; counts a drop.
        self.describe: Callable[[str], str] = lambda eio_sid: f"connection {eio_sid}"
        self.on_not_reading: Callable[[], None] = lambda: None
        self._tasks: set[asyncio.Task[None]] = set()
        if self.async_mode != "aiohttp":
            raise ValueError("chatsock's Socket.IO server runs on aiohttp only")
        # The driver is a shared module-level dict: replace it, never update it.
        driver: dict[str, Any] = self._async  # type: ignore[has-type]
        self._async = {
            **driver,
            "websocket": _GuardedWebSocket,
            "translate_request": self._translate_request,
        }

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        if args or kwargs:
            return super().create_queue(*args, **kwargs)  # type: ignore[no-any-return]
        return SendQueue()  # every socket's send queue (Engine.IO's BaseSocket)

    def not_reading(self, socket: _LeanSocket, problem: str) -> None:
        """One log line and one count per connection dropped for not reading."""
        if socket.not_reading:
            return
        socket.not_reading = True
        log.info("%s does not read: %s; disconnected", self.describe(socket.sid), problem)
        self.on_not_reading()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task this server keeps until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _translate_request(self, request: web.BaseRequest) -> dict[str, Any]:
        environ: dict[str, Any] = eio_aiohttp.translate_request(request)
        if request.method == "POST":
            body = environ["wsgi.input"] = _CheckedBody(self, request)
            if body.too_large:
                # Engine.IO's own refusal of a long body disconnects with wait=True: the
                # request then hangs until the client polls, which an attacker never does.
                environ["CONTENT_LENGTH"] = "0"
        return environ


def _library_logger(name: str) -> logging.Logger:
    """python-socketio's and Engine.IO's logger, without the handler they add.

    Passing a logger object keeps them from adding their own stderr handler,
    which printed every line twice (once unescaped). ERROR is their default
    level: INFO would log every packet."""
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    return logger


# An Engine.IO connection must connect the namespace (and so authenticate and
# be counted in limits.connections_per_ip) within this long, or it is closed.
NAMESPACE_CONNECT_S: Final = 10.0


class ChatsockServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's AsyncServer, refusing binary and malformed packets (module
    docstring), and closing connections that never connect the namespace."""

    def __init__(self, *, send_limits: SendLimits | None = None, **options: Any) -> None:
        options.setdefault("logger", _library_logger("socketio.server"))
        options.setdefault("engineio_logger", _library_logger("engineio.server"))
        super().__init__(**options)
        self.eio.send_limits = send_limits or SendLimits()
        self.eio.describe = self._describe
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self.namespace_connect_s = NAMESPACE_CONNECT_S
        self._drops: set[asyncio.Task[None]] = set()

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        socket = self.eio.sockets.get(eio_sid)
        if type(socket) is AsyncSocket:
            socket.__class__ = _LeanSocket  # before its writer first polls
        result = await super()._handle_eio_connect(eio_sid, environ)
        self._arm_deadline(eio_sid)
        return result

    def _arm_deadline(self, eio_sid: str) -> None:
        previous = self._deadlines.pop(eio_sid, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._deadlines[eio_sid] = loop.call_later(
            self.namespace_connect_s, self._connect_deadline, eio_sid
        )

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        # python-socketio skips the disconnect handler of a socket whose transport
        # closed while its connect handler awaited (the sid was still pending), so
        # the connection hold taken there would be renewed forever. Run it now.
        if not self._open(eio_sid):
            await self._handle_disconnect(eio_sid, namespace or "/", self.reason.TRANSPORT_CLOSE)

    async def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: Any = None
    ) -> None:
        await super()._handle_disconnect(eio_sid, namespace, reason)
        # A transport that left the namespace but stays open is back to holding a
        # socket without a token: it gets the same deadline as a new one.
        if self._open(eio_sid) and self.manager.sid_from_eio_sid(eio_sid, "/") is None:
            self._arm_deadline(eio_sid)

    def on_not_reading(self, count: Callable[[], None]) -> None:
        """Call `count` for each connection dropped for not reading (a metric)."""
        self.eio.on_not_reading = count

    def _describe(self, eio_sid: str) -> str:
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        who = f"socket {sid}" if sid else f"connection {eio_sid}"
        return f"{who} from {_peer(self.environ.get(eio_sid))}"

    def _open(self, eio_sid: str) -> bool:
        socket = self.eio.sockets.get(eio_sid)
        return socket is not None and not socket.closed and not socket.closing

    def _connect_deadline(self, eio_sid: str) -> None:
        """A transport that still has not connected the namespace: it holds a socket
        without a token and outside the per-IP count, so it is closed."""
        self._deadlines.pop(eio_sid, None)
        if self.manager.sid_from_eio_sid(eio_sid, "/") is not None or not self._open(eio_sid):
            return
        socket = self.eio.sockets[eio_sid]
        log.info("connection %s never connected the namespace; closing it", eio_sid)
        task = asyncio.get_running_loop().create_task(_drop(socket))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> Any:
        deadline = self._deadlines.pop(eio_sid, None)
        if deadline is not None:
            deadline.cancel()
        return await super()._handle_eio_disconnect(eio_sid, reason)

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return ChatsockEngine

    async def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        problem = socketio_problem(data, self.packet_class)
        if problem is None:
            await super()._handle_eio_message(eio_sid, data)
            return
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return  # already refused: one line per connection
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        who = f"socket {sid}" if sid else f"connection {eio_sid}"
        _refused(who, self.environ.get(eio_sid), problem, data)
        await _drop(socket)
