"""A real python-socketio server whose clients are fakes at the transport edge.

Everything above the transport is python-socketio's own code (rooms, emits,
skip lists, per-recipient send tasks); only the last step, handing an
Engine.IO packet to a socket, is replaced: the packet is decoded and recorded
for the socket it was addressed to. That is a fake of the far end, which
lets a test drive thousands of interleavings without network sockets.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import engineio
import socketio


class _CountingEngine(engineio.AsyncServer):
    """Engine.IO as it is, but with ids counted up: runs replay identically."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._ids = itertools.count(1)

    def generate_id(self) -> str:
        return f"sid{next(self._ids)}"


class RecordingServer(socketio.AsyncServer):
    """`sent[sid]` lists the `(event, payload)` each socket was sent, in order.
    While `hold` is set, sends wait for it (a slow client connection)."""

    def __init__(self) -> None:
        super().__init__(async_mode="aiohttp")
        self.sent: dict[str, list[tuple[str, Any]]] = {}
        self.hold: asyncio.Event | None = None
        self._sid_of: dict[str, str] = {}
        self._eio_ids = itertools.count(1)

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return _CountingEngine

    async def add_socket(self) -> str:
        """A connected socket on `/` (no transport); returns its sid."""
        eio_sid = f"eio{next(self._eio_ids)}"
        sid: str = await self.manager.pre_connect(eio_sid, "/")
        await self.manager.connect(sid, "/")
        self.sent[sid] = []
        self._sid_of[eio_sid] = sid
        return sid

    def drop_socket(self, sid: str) -> None:
        """The socket disconnected: it leaves every room (what it was sent stays)."""
        self.manager.basic_disconnect(sid, "/")

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        if self.hold is not None:
            await self.hold.wait()
        pkt = self.packet_class(encoded_packet=eio_pkt.data)
        event, payload = pkt.data
        self.sent[self._sid_of[eio_sid]].append((event, payload))

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if self.hold is not None:
            await self.hold.wait()
        event, payload = pkt.data
        self.sent[self._sid_of[eio_sid]].append((event, payload))
