"""The docker-compose nginx configuration in front of two workers, with socket.io-client."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.nginx import Nginx
from tests.support.node import run_node_client
from tests.support.process import Worker
from tests.support.waiting import poll_until

pytestmark = [pytest.mark.redis, pytest.mark.node]


async def test_stream_through_nginx_polling_then_websocket_upgrade(redis_url):
    env = {"REDIS_URL": redis_url, "CHATSOCK_DEMO_TOKENS_PER_SECOND": "500"}
    workers = [Worker(env=env), Worker(env=env)]
    await asyncio.gather(*(asyncio.to_thread(w.start) for w in workers))
    proxy = Nginx([w.port for w in workers])
    try:
        await asyncio.to_thread(proxy.start)
        result = await run_node_client(
            proxy.url, "stream", transports=["polling", "websocket"], message="through nginx"
        )
        assert not result.get("timedOut"), result
        event, end = result["end"]
        assert event == "chat_complete"
        tokens = [d for e, d in result["events"] if e == "chat_token"]
        assert [t["seq"] for t in tokens] == list(range(1, len(tokens) + 1))
        assert "".join(t["token"] for t in tokens) == end["full_response"]
        assert result["transport"] == "websocket"  # upgraded from polling
        # nginx logs a WebSocket request when it closes, a moment after the client left.
        await poll_until(lambda: " 101 " in proxy.access_log(), within=10)
        log = proxy.access_log()
        assert "transport=polling" in log
        assert "transport=websocket" in log
        assert " 101 " in log
    finally:
        proxy.stop()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
