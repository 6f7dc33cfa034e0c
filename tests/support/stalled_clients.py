"""Clients that stop reading: raw TCP with a tiny receive window, so the worker's
writes really back up (the kernel's window fills, then the worker's buffers).

`StalledSocketIO` speaks just enough WebSocket, Engine.IO and Socket.IO to
connect and start a stream, then reads nothing until `read_rest`.
`StalledSse` posts `/api/chat/stream` for SSE and never reads the response.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import orjson

RECEIVE_BUFFER = 4096  # SO_RCVBUF: Linux doubles it, and it caps the TCP window
ETHERNET_MSS = 1448
_STREAM_LIMIT = 1024  # asyncio stops reading the socket past 2x this


def vm_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A field of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)  # before connect
    # Loopback's MSS is 64 KiB, which lets the worker's kernel autotune its send
    # buffer to 4 MiB per connection; an Ethernet-sized MSS keeps it as small as
    # over a real network, so the worker's own buffers fill as they would there.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, ETHERNET_MSS)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=_STREAM_LIMIT)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


class StalledSocketIO:
    """A Socket.IO client on a raw WebSocket that reads only until its stream starts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tokens: dict[int, str] = {}  # seq -> text, of what it did read
        self.terminal: tuple[str, dict[str, Any]] | None = None
        self.close_code: int | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> StalledSocketIO:
        self._reader, self._writer = await _open(self.port)
        key = base64.b64encode(os.urandom(16)).decode()
        self._writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        opened = await self._message()
        assert (opened or "").startswith("0{"), opened
        await self._send("40")
        while (reply := await self._message()) is not None and not reply.startswith("40"):
            pass
        assert (reply or "").startswith('40{"sid"'), reply
        return self

    async def start_stream(self, message: str) -> str:
        """Send chat_stream; read until its ack (recording tokens on the way); return
        the stream id. Nothing more is read until `read_rest`."""
        await self._send("421" + orjson.dumps(["chat_stream", {"message": message}]).decode())
        while True:
            text = await self._message()
            assert text is not None, "closed before the chat_stream ack"
            if text.startswith("431"):
                ack = orjson.loads(text[3:])[0]
                assert ack.get("ok", True) is not False, ack
                return str(ack["stream_id"])

    async def resume(self, stream_id: str, after: int = 0) -> None:
        """Send chat_resume and read nothing more: its ack comes after the replay."""
        payload = {"stream_id": stream_id, "after": after}
        await self._send("422" + orjson.dumps(["chat_resume", payload]).decode())

    async def read_rest(self) -> None:
        """Read (and record) whatever still arrives, until the connection ends."""
        try:
            while await self._message() is not None:
                pass
        except (OSError, asyncio.IncompleteReadError):
            pass  # reset: the worker dropped it

    @property
    def last_seq(self) -> int:
        """The last seq of the unbroken run from 1 it read."""
        seq = 0
        while seq + 1 in self.tokens:
            seq += 1
        return seq

    async def close(self) -> None:
        if self._writer is not None:
            await _close(self._writer)

    async def _send(self, text: str) -> None:
        assert self._writer is not None
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._writer.write(head + mask + masked)
        await self._writer.drain()

    async def _message(self) -> str | None:
        """The next Engine.IO text message (answering pings); None once closed."""
        assert self._reader is not None
        while True:
            try:
                first, second = await self._reader.readexactly(2)
            except asyncio.IncompleteReadError:
                return None
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self._reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self._reader.readexactly(8))
            payload = await self._reader.readexactly(size)
            opcode = first & 0x0F
            if opcode == 0x8:  # close
                self.close_code = struct.unpack("!H", payload[:2])[0] if size >= 2 else None
                return None
            if opcode != 0x1:
                continue
            text = payload.decode()
            if text == "2":
                await self._send("3")
                continue
            self._note(text)
            return text

    def _note(self, text: str) -> None:
        if not text.startswith("42"):
            return
        event, data = orjson.loads(text[2:])[:2]
        if event == "chat_token":
            self.tokens[int(data["seq"])] = str(data["token"])
        elif event in ("chat_complete", "chat_stream_error"):
            self.terminal = (event, data)


class StalledSse:
    """An HTTP client that asks for a stream as SSE and never reads the response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def follow(self, stream_id: str, after: int = 0) -> StalledSse:
        """`GET /api/chat/stream/<id>` from `after`; the request is sent, nothing read."""
        self._reader, self._writer = await _open(self.port)
        self._writer.write(
            (
                f"GET /api/chat/stream/{stream_id}?after={after} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await self._writer.drain()
        return self

    async def read_rest(self) -> tuple[bytes, dict[int, str]]:
        """What still arrives until the connection ends: the raw bytes, and the
        chat_token events complete in them (seq -> text)."""
        assert self._reader is not None
        chunks = []
        try:
            while chunk := await self._reader.read(65536):
                chunks.append(chunk)
        except OSError:
            pass  # reset: the worker dropped it
        raw = b"".join(chunks)
        return raw, sse_tokens(dechunk(raw.partition(b"\r\n\r\n")[2]))

    async def close(self) -> None:
        if self._writer is not None:
            await _close(self._writer)


def dechunk(body: bytes) -> bytes:
    """A chunked HTTP body, possibly cut short: the data of its complete chunks."""
    out = bytearray()
    while True:
        line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return bytes(out)
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0 or len(rest) < size + 2:
            return bytes(out)
        out += rest[:size]
        body = rest[size + 2 :]


def sse_tokens(text: bytes) -> dict[int, str]:
    """seq -> text of the complete chat_token events in an SSE body."""
    tokens: dict[int, str] = {}
    for event in text.split(b"\n\n")[:-1]:  # the last piece may be cut short
        fields = dict(line.split(b": ", 1) for line in event.split(b"\n") if b": " in line)
        if fields.get(b"event") == b"chat_token":
            data = orjson.loads(fields[b"data"])
            tokens[int(data["seq"])] = str(data["token"])
    return tokens
