"""A connection's hold (limits.connections_per_ip) is released however the
connection ends: even when its transport closes while the connect handler is
still waiting on the store, or when it leaves the namespace but keeps the
transport open.

In-process app on a real redis-server (through a TcpProxy that can hold every
byte, so the connect handler is caught mid-await), raw polling and WebSocket
requests for the attacker, a python-socketio client for the honest user.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
import orjson

from chatsock.app import NAMESPACE
from chatsock.sio_server import ChatsockServer
from tests.conftest import ServerFactory, url_of
from tests.support.clients import RecordingClient
from tests.support.tcp_proxy import TcpProxy

POLLING = "/socket.io/?EIO=4&transport=polling"
WEBSOCKET = "/socket.io/?EIO=4&transport=websocket"
PER_IP = 2


async def _polling_session(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(base + POLLING) as reply:
        body = await reply.text()
    sid: str = orjson.loads(body[1:])["sid"]
    return f"{base}{POLLING}&sid={sid}"


async def _post(http: aiohttp.ClientSession, url: str, body: str) -> int:
    async with http.post(url, data=body, headers={"Content-Type": "text/plain"}) as reply:
        await reply.read()
        return reply.status


async def test_polling_connections_closed_while_connecting_release_their_hold(
    start_server: ServerFactory,
    redis_url: str,
    http: aiohttp.ClientSession,
    clients: list[RecordingClient],
) -> None:
    """Each connection sends its namespace connect, then closes while the store is
    stalled: python-socketio never calls the disconnect handler for a socket that
    was still connecting, so without chatsock's own call every such connection
    kept its hold, renewed forever, and the address was locked out."""
    target = urlsplit(redis_url)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        server = await start_server(
            store={"redis_url": f"redis://127.0.0.1:{proxy.port}{target.path}"},
            limits={"connections_per_ip": PER_IP},
        )
        base = url_of(server)
        for _ in range(PER_IP + 2):
            url = await _polling_session(http, base)
            proxy.pause()  # the connect handler now waits on Redis
            connecting = asyncio.create_task(_post(http, url, "40"))
            await asyncio.sleep(0.2)
            assert await _post(http, url, "1") == 200  # Engine.IO close
            proxy.resume()
            assert await connecting == 200
        ns = server.app[NAMESPACE]
        await asyncio.sleep(0.2)
        assert len(ns.clients) == 0
        await ns.gate.quotas.refresh()  # renews only what is still held

        honest = await RecordingClient().connect(base)
        clients.append(honest)
        assert honest.sio.connected
        assert len(ns.clients) == 1


async def test_a_transport_that_leaves_the_namespace_gets_the_connect_deadline_again(
    start_server: ServerFactory, http: aiohttp.ClientSession, clients: list[RecordingClient]
) -> None:
    """Connect the namespace, leave it with `41`, keep the WebSocket open: the
    hold is released and the transport, now holding a socket with no token and
    outside the per-address count, is closed after the namespace deadline."""
    server = await start_server(limits={"connections_per_ip": PER_IP})
    sio: ChatsockServer = server.app[NAMESPACE].server
    sio.namespace_connect_s = 0.5
    ws_url = url_of(server).replace("http", "ws", 1) + WEBSOCKET
    sockets = []
    for _ in range(PER_IP + 1):
        ws = await http.ws_connect(ws_url)
        sockets.append(ws)
        await ws.receive()  # Engine.IO open
        await ws.send_str("40")
        assert (await ws.receive()).data.startswith("40{")
        await ws.send_str("41")
    try:
        for ws in sockets:
            async with asyncio.timeout(5):
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT and message.data == "2":
                        await ws.send_str("3")
            assert ws.closed
        honest = await RecordingClient().connect(url_of(server))
        clients.append(honest)
        assert honest.sio.connected
    finally:
        for ws in sockets:
            await ws.close()
