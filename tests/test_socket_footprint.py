"""What each WebSocket connection costs the worker: no permessage-deflate.

chatsock's frames are a few dozen bytes; deflate saves nothing there and
costs CPU per frame plus a compressor and decompressor per connection, so
the worker declines the extension a client offers (sio_server.py)."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer

from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient

WEBSOCKET = "/socket.io/?EIO=4&transport=websocket"


async def test_the_worker_declines_permessage_deflate_a_client_offers(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    url = url_of(server).replace("http", "ws", 1) + WEBSOCKET
    async with http.ws_connect(url, compress=15) as ws:
        assert ws.compress == 0
        opened = await ws.receive()
        assert opened.type == aiohttp.WSMsgType.TEXT
        assert opened.data.startswith("0{")
        await ws.send_str("40")
        assert (await ws.receive()).data.startswith("40{")


async def test_a_stream_over_an_uncompressed_socket_is_whole(
    server: TestServer, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    fake_provider.enqueue("hello ", "world")
    client = await RecordingClient().connect(url_of(server))
    clients.append(client)
    ack = await client.call("chat_stream", {"message": "hi"})
    done = await client.wait_event("chat_complete", ack["stream_id"])
    assert done["full_response"] == "hello world"
