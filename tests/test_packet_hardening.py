"""Binary and malformed packets against a real worker: refused, one log line, no traceback.

Frames go over a raw aiohttp WebSocket (or raw polling requests) to
`/socket.io/?EIO=4&transport=websocket`, byte for byte what an attacker sends;
an honest python-socketio client on another connection keeps streaming.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from tests.support.clients import RecordingClient
from tests.support.process import Worker
from tests.support.waiting import poll_until

WEBSOCKET = "/socket.io/?EIO=4&transport=websocket"
POLLING = "/socket.io/?EIO=4&transport=polling"
MIB = 1024 * 1024
REFUSED = re.compile(r" (INFO|WARNING) chatsock\.sio_server: .* refused: ")


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """One worker for the module (each test reads only the log lines it caused)."""
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):  # what conftest's _isolated_env does per test
            if name.startswith(("CHATSOCK_", "OPENAI_", "ANTHROPIC_")) or name == "REDIS_URL":
                env.delenv(name)
        started = Worker(env={"CHATSOCK_DEMO_TOKENS_PER_SECOND": "200"})
    yield started.start()
    started.stop()


class WorkerLog:
    """The lines a worker logs between two marks (an access-logged request)."""

    def __init__(self, worker: Worker, http: aiohttp.ClientSession) -> None:
        self.worker = worker
        self.http = http
        self.seen = len(worker.log().splitlines())

    async def since_last(self) -> list[str]:
        """Everything logged since the last call, access-log lines left out."""
        mark = f"mark-{uuid.uuid4().hex}"
        async with self.http.get(f"{self.worker.url}/healthz?{mark}") as reply:
            assert reply.status == 200
        async with asyncio.timeout(10):
            while True:
                lines = self.worker.log().splitlines()
                at = next((i for i, line in enumerate(lines) if f"?{mark} " in line), None)
                if at is not None:
                    break
                await asyncio.sleep(0.05)
        new, self.seen = lines[self.seen : at], at + 1
        return [line for line in new if " aiohttp.access: " not in line]


async def _connected(
    http: aiohttp.ClientSession, worker: Worker
) -> aiohttp.ClientWebSocketResponse:
    """A raw WebSocket through the Engine.IO handshake and the Socket.IO connect of `/`."""
    ws = await http.ws_connect(worker.url + WEBSOCKET)
    opened = await ws.receive(timeout=10)
    assert opened.type == aiohttp.WSMsgType.TEXT
    assert opened.data.startswith("0{")
    await ws.send_str("40")
    connected = await ws.receive(timeout=10)
    assert connected.type == aiohttp.WSMsgType.TEXT
    assert connected.data.startswith("40{")
    return ws


async def _closed_by_server(ws: aiohttp.ClientWebSocketResponse, within: float = 10) -> bool:
    """Whether the server closes the WebSocket (an Engine.IO CLOSE first is fine)."""
    try:
        async with asyncio.timeout(within):
            while True:
                msg = await ws.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return True
    except TimeoutError:
        return False


def _rss(worker: Worker) -> int:
    assert worker.proc is not None
    status = Path(f"/proc/{worker.proc.pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found is not None
    return int(found.group(1)) * 1024


async def _streams_fine(worker: Worker) -> None:
    """An honest client on its own connection streams a whole reply."""
    client = RecordingClient()
    try:
        await client.connect(worker.url)
        ack = await client.call("chat_stream", {"message": "still there?"})
        event, _ = await client.wait_terminal(ack["stream_id"], within=20)
        assert event == "chat_complete"
        assert client.tokens(ack["stream_id"])
    finally:
        await client.close()


def _refusals(lines: list[str]) -> list[str]:
    return [line for line in lines if REFUSED.search(line)]


async def test_a_binary_event_disconnects_at_once_and_buffers_none_of_its_attachments(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    log = WorkerLog(worker, http)
    before = _rss(worker)
    ws = await _connected(http, worker)
    try:
        # The attack: a BINARY_EVENT announcing 150 attachments, then 150 frames of
        # ~1 MB (under the 1 MiB message limit). Before the fix each one was buffered.
        await ws.send_str('4150-["chat_stream",' + '{"_placeholder":true,"num":0},' * 149 + "1]")
        attachment = b"\0" * 1_000_000
        sent = 0
        try:
            for _ in range(150):
                if ws.closed:
                    break
                await ws.send_bytes(attachment)
                sent += 1
        except (ConnectionError, aiohttp.ClientError):
            pass
        assert await _closed_by_server(ws)
    finally:
        await ws.close()
    grown = _rss(worker) - before
    assert grown < 48 * MIB, f"the worker grew by {grown / MIB:.0f} MiB after {sent} attachments"
    lines = await log.since_last()
    assert len(_refusals(lines)) == 1, lines
    assert "binary packets are not accepted" in _refusals(lines)[0]
    assert " INFO " in _refusals(lines)[0]
    assert not any("Traceback" in line for line in lines), lines
    await _streams_fine(worker)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"\x00\x01binary", id="binary-websocket-message"),
        pytest.param("b4MA==", id="base64-binary-message"),
        pytest.param('451-["chat_stop",{"_placeholder":true,"num":0}]', id="binary-event"),
        pytest.param('461-1[{"_placeholder":true,"num":0}]', id="binary-ack"),
    ],
)
async def test_any_binary_message_or_packet_disconnects_with_one_info_line(
    worker: Worker, http: aiohttp.ClientSession, frame: str | bytes
) -> None:
    log = WorkerLog(worker, http)
    ws = await _connected(http, worker)
    try:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        assert await _closed_by_server(ws)
    finally:
        await ws.close()
    lines = await log.since_last()
    assert len(lines) == 1, lines
    assert " INFO chatsock.sio_server: " in lines[0]
    assert "binary packets are not accepted; disconnected" in lines[0]


# Each was a traceback (logged twice) before; a few also left the socket open.
MALFORMED = [
    "4x",
    "42",
    "4{",
    "42[",
    '42["chat_stop",',
    "42{}",
    "42[1]",
    '42"chat_stop"',
    "43",
    "44",
    "49",
    "4",
    "7",
    "x",
    "",
    "42/" + "n" * 5000 + ',["chat_stop",{}]',
    "4" + "1" * 200 + "-[]",
]


async def test_each_malformed_packet_costs_its_connection_and_one_line_without_traceback(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    log = WorkerLog(worker, http)
    for frame in MALFORMED:
        ws = await _connected(http, worker)
        try:
            await ws.send_str(frame)
            assert await _closed_by_server(ws), f"{frame[:40]!r} left the socket connected"
        finally:
            await ws.close()
        lines = await log.since_last()
        assert len(lines) == 1, (frame[:40], lines)
        assert " WARNING chatsock.sio_server: " in lines[0]
        assert "; disconnected" in lines[0]
        assert len(lines[0]) < 600, "the packet is quoted, cut short"
    await _streams_fine(worker)


async def test_a_flood_of_malformed_packets_on_one_connection_logs_one_line(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    log = WorkerLog(worker, http)
    ws = await _connected(http, worker)
    try:
        try:
            for _ in range(100):
                await ws.send_str("4x")
        except (ConnectionError, aiohttp.ClientError):
            pass
        assert await _closed_by_server(ws)
    finally:
        await ws.close()
    lines = await log.since_last()
    assert len(lines) == 1, lines
    assert "undecodable Socket.IO packet" in lines[0]


async def test_a_refused_packet_quotes_the_client_text_escaped(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    log = WorkerLog(worker, http)
    ws = await _connected(http, worker)
    try:
        await ws.send_str('42{"x":"\n2026-01-01 00:00:00,000 ERROR forged \x1b[31m"}')
        assert await _closed_by_server(ws)
    finally:
        await ws.close()
    lines = await log.since_last()
    assert len(lines) == 1, lines
    assert "\\n2026-01-01 00:00:00,000 ERROR forged \\x1b[31m" in lines[0]
    assert "\x1b" not in worker.log()


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
async def test_an_oversized_websocket_message_disconnects_without_growing_the_worker(
    worker: Worker, http: aiohttp.ClientSession, compress: int
) -> None:
    """CVE-2026-48809: Engine.IO's payload limit (http.client_max_size, 1 MiB) holds on
    aiohttp WebSockets, also for a deflated message that inflates to 64 MiB."""
    log = WorkerLog(worker, http)
    before = _rss(worker)
    ws = await http.ws_connect(worker.url + WEBSOCKET, compress=compress)
    try:
        await ws.receive(timeout=10)
        try:
            await ws.send_str("4" + "a" * (64 * MIB))
        except (ConnectionError, aiohttp.ClientError):
            pass
        assert await _closed_by_server(ws)  # 1009, or a reset while the client still sends
    finally:
        await ws.close()
    assert _rss(worker) - before < 32 * MIB
    lines = await log.since_last()
    assert len(lines) == 1, lines
    assert "a WebSocket message over 1048576 bytes (http.client_max_size); disconnected" in lines[0]
    await _streams_fine(worker)


async def _polling_session(http: aiohttp.ClientSession, worker: Worker) -> str:
    async with http.get(worker.url + POLLING) as reply:
        opened = await reply.text()
    found = re.search(r'"sid":"([^"]+)"', opened)
    assert found is not None, opened
    sid = found.group(1)
    async with http.post(f"{worker.url}{POLLING}&sid={sid}", data="40") as reply:
        assert reply.status == 200
    async with http.get(f"{worker.url}{POLLING}&sid={sid}") as reply:
        assert (await reply.text()).startswith("40{")
    return sid


@pytest.mark.parametrize(
    ("payload", "level"),
    [
        ("x", "WARNING"),
        ("4x\x1e3", "WARNING"),
        ("2", "WARNING"),
        ("\x1e".join(["3"] * 17), "WARNING"),
        ("b4MA==", "INFO"),
        ('451-["chat_stop",{"_placeholder":true,"num":0}]', "INFO"),
    ],
    ids=["garbage", "bad-packet-in-batch", "ping", "17-packets", "binary", "binary-event"],
)
async def test_a_malformed_polling_payload_ends_the_session_with_one_line(
    worker: Worker, http: aiohttp.ClientSession, payload: str, level: str
) -> None:
    log = WorkerLog(worker, http)
    sid = await _polling_session(http, worker)
    async with http.post(f"{worker.url}{POLLING}&sid={sid}", data=payload.encode()) as reply:
        await reply.read()
    async with asyncio.timeout(10):
        while True:
            async with http.get(f"{worker.url}{POLLING}&sid={sid}") as reply:
                if reply.status == 400:
                    break  # the session is gone
                assert reply.status == 200
    lines = [line for line in await log.since_last() if "engineio.server" not in line]
    assert len(lines) == 1, lines
    assert f" {level} chatsock.sio_server: " in lines[0]
    assert not any("Traceback" in line for line in worker.log().splitlines()), worker.log()


async def test_an_honest_client_polling_then_upgrading_is_not_refused(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    """socket.io's default: long-polling first (checked POST bodies), then a WebSocket."""
    log = WorkerLog(worker, http)
    client = socketio.AsyncClient(reconnection=False)
    done: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    client.on("chat_complete", lambda data: done.put_nowait(("chat_complete", data)))
    client.on("chat_stream_error", lambda data: done.put_nowait(("chat_stream_error", data)))
    try:
        await client.connect(worker.url, wait_timeout=10)
        ack = await client.call("chat_stream", {"message": "over polling"}, timeout=10)
        event, data = await asyncio.wait_for(done.get(), 20)
        assert (event, data["stream_id"]) == ("chat_complete", ack["stream_id"])
        assert await poll_until(lambda: client.transport() == "websocket", within=10)
        ack = await client.call("chat_stream", {"message": "over the websocket"}, timeout=10)
        event, data = await asyncio.wait_for(done.get(), 20)
        assert (event, data["stream_id"]) == ("chat_complete", ack["stream_id"])
    finally:
        await client.disconnect()
        await client.shutdown()
    assert _refusals(await log.since_last()) == []


async def test_an_oversized_polling_post_is_answered_at_once_and_ends_the_session(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    """Engine.IO's own refusal waited for the client to poll again: the request hung."""
    log = WorkerLog(worker, http)
    sid = await _polling_session(http, worker)
    async with http.post(
        f"{worker.url}{POLLING}&sid={sid}",
        data=io.BytesIO(b"4" * (2 * MIB)),
        timeout=aiohttp.ClientTimeout(total=15),
    ) as reply:
        assert reply.status == 400
    async with http.get(f"{worker.url}{POLLING}&sid={sid}") as reply:
        assert reply.status == 400  # the session is gone
    lines = [line for line in await log.since_last() if "engineio.server" not in line]
    assert len(lines) == 1, lines
    assert "a polling payload over 1048576 bytes (http.client_max_size); disconnected" in lines[0]


async def test_garbage_during_a_websocket_upgrade_ends_the_polling_session(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    """Engine.IO abandons a failed upgrade and keeps the session polling; chatsock closes it."""
    log = WorkerLog(worker, http)
    sid = await _polling_session(http, worker)
    ws = await http.ws_connect(f"{worker.url}{WEBSOCKET}&sid={sid}")
    try:
        await ws.send_str("x")
        assert await _closed_by_server(ws)
    finally:
        await ws.close()
    async with http.get(f"{worker.url}{POLLING}&sid={sid}") as reply:
        assert reply.status == 400  # the session is gone
    lines = [line for line in await log.since_last() if "engineio.server" not in line]
    assert len(lines) == 1, lines
    assert f"connection {sid} from '127.0.0.1' refused: not an Engine.IO packet" in lines[0]
