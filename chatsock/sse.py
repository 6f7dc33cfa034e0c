"""Writing a followed stream to an HTTP client: as Server-Sent Events, or as one JSON reply.

Both read a fanout `Listener`'s queue until the stream's terminal event. Each
event is encoded once (one `orjson.dumps`); whatever is queued when the
writer wakes goes out in one write. `orjson` never emits a raw newline, so
every `data:` is one line.

Every write is bounded by a write timeout: aiohttp's `write` awaits a drain
once the transport holds 64 KiB, which a client that stops reading never
allows. Past the timeout the connection is dropped (`ClientNotReading`), so
neither the response nor the listener's queue outlives it; the client
reconnects with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
from typing import Final

import orjson
from aiohttp import web

from chatsock import protocol
from chatsock.fanout import Listener
from chatsock.protocol import Payload

TERMINAL_EVENTS: Final = frozenset({protocol.COMPLETE, protocol.STREAM_ERROR})
HEARTBEAT: Final = b": ping\n\n"
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event through, do not buffer
}
# With stop_on_disconnect, how often an idle writer checks that its client is
# still there (aiohttp does not cancel handlers on disconnect by default).
DISCONNECT_POLL_S: Final = 0.2


def encode_event(event: str, payload: Payload, marks: list[int] | None = None) -> bytes:
    """One SSE event; `chat_token` carries `id: <seq>` for Last-Event-ID resumes.

    For a client that opted in to reasoning, `marks` holds the last `chat_token`
    and `chat_reasoning` seqs it was sent, and both events carry
    `id: <token seq>.<reasoning seq>`, so a resume names where it is in each."""
    data = orjson.dumps(payload)
    if marks is not None and (event == protocol.TOKEN or event == protocol.REASONING):
        marks[event == protocol.REASONING] = payload["seq"]
        head = b"id: %d.%d\nevent: %s\ndata: %s\n\n"
        return head % (marks[0], marks[1], event.encode(), data)
    if event == protocol.TOKEN:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (payload["seq"], event.encode(), data)
    return b"event: %s\ndata: %s\n\n" % (event.encode(), data)


def client_gone(request: web.Request) -> bool:
    """Whether the client closed the connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


class ClientGone(Exception):
    """The HTTP client went away before the stream's terminal event."""


class ClientNotReading(ClientGone):
    """A write waited past the write timeout: the connection was dropped."""


async def _write(
    request: web.Request, response: web.StreamResponse, data: bytes, timeout_s: float
) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await response.write(data)
    except TimeoutError:
        transport = request.transport
        if transport is not None:
            transport.abort()  # what it still buffers is dropped with it
        raise ClientNotReading from None


async def write_events(
    request: web.Request,
    response: web.StreamResponse,
    listener: Listener,
    *,
    heartbeat_s: float,
    watch_disconnect: bool,
    write_timeout_s: float,
) -> None:
    """Write the listener's events until the terminal one; `: ping` after `heartbeat_s` idle.

    Raises ClientGone when the client disconnects first, ClientNotReading when one
    write waits over `write_timeout_s`.
    """
    queue = listener.queue
    marks = listener.marks
    loop = asyncio.get_running_loop()
    poll = min(heartbeat_s, DISCONNECT_POLL_S) if watch_disconnect else heartbeat_s
    next_ping = loop.time() + heartbeat_s
    try:
        while True:
            if queue.empty():
                try:
                    async with asyncio.timeout(min(poll, max(next_ping - loop.time(), 0))):
                        first = await queue.get()
                except TimeoutError:
                    if client_gone(request):
                        raise ClientGone from None
                    if loop.time() >= next_ping:
                        await _write(request, response, HEARTBEAT, write_timeout_s)
                        next_ping = loop.time() + heartbeat_s
                    continue
            else:
                first = queue.get_nowait()
            chunks = [encode_event(*first, marks)]
            done = first[0] in TERMINAL_EVENTS
            while not done and not queue.empty():
                event, payload = queue.get_nowait()
                chunks.append(encode_event(event, payload, marks))
                done = event in TERMINAL_EVENTS
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            await _write(request, response, data, write_timeout_s)
            if done:
                return
            next_ping = loop.time() + heartbeat_s
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError subclasses it
        raise ClientGone from None


async def wait_terminal(
    request: web.Request,
    listener: Listener,
    *,
    watch_disconnect: bool,
    reasoning: list[str] | None = None,
) -> tuple[str, Payload]:
    """Drop token events (collecting reasoning texts into `reasoning`, if given);
    return the terminal `(event, payload)`.

    Raises ClientGone when the client disconnects first (checked only when
    `watch_disconnect`, since nothing is written to notice it otherwise).
    """
    queue = listener.queue
    while True:
        if watch_disconnect and queue.empty():
            try:
                async with asyncio.timeout(DISCONNECT_POLL_S):
                    event, payload = await queue.get()
            except TimeoutError:
                if client_gone(request):
                    raise ClientGone from None
                continue
        else:
            event, payload = await queue.get()
        if event in TERMINAL_EVENTS:
            return event, payload
        if reasoning is not None and event == protocol.REASONING:
            reasoning.append(payload["reasoning"])
