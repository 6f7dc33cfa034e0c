"""A client that gives up on its WebSocket handshake (a connect timeout on a busy
server, a closed tab) is one INFO line, not a 40-line ERROR traceback each: the
soak saw 5,348 of them in one run."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import create_app

UPGRADE = (
    "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
    "Host: 127.0.0.1:{port}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def _abandon(port: int) -> None:
    """Send a WebSocket upgrade, then reset the connection at once (SO_LINGER 0)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(UPGRADE.format(port=port).encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_abandoned_websocket_handshakes_log_no_error(
    make_settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = TestServer(create_app(make_settings()), host="127.0.0.1")
    await server.start_server()
    try:
        await asyncio.gather(*(asyncio.to_thread(_abandon, server.port) for _ in range(40)))
        await asyncio.sleep(0.5)
    finally:
        await server.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
