"""Deleting a session reaches its room's members on every worker, through the
Socket.IO Redis manager, and takes them out of the room."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.clients import RecordingClient
from tests.support.process import Worker
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
async def cluster(private_redis_server: RedisServer) -> AsyncIterator[tuple[Worker, Worker]]:
    common = {"REDIS_URL": private_redis_server.url, "CHATSOCK_DEMO_TOKENS_PER_SECOND": "200"}
    a = Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-a"})
    b = Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-b"})
    try:
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        yield a, b
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def _manager_hears(http: aiohttp.ClientSession, worker: Worker) -> None:
    """Wait until the worker's Socket.IO manager has heard its own heartbeat, so
    it is subscribed (it subscribes when its first client connects)."""
    async with asyncio.timeout(15):
        while True:
            async with http.get(f"{worker.url}/readyz") as reply:
                heard = (await reply.json()).get("listeners_heard_s", {})
            if heard.get("socketio") is not None:
                return
            await asyncio.sleep(0.1)


async def _chat(http: aiohttp.ClientSession, worker: Worker, session_id: str) -> dict:
    async with http.post(
        f"{worker.url}/api/chat/stream", json={"message": "hello", "session_id": session_id}
    ) as reply:
        assert reply.status == 200, await reply.text()
        body: dict = await reply.json()
        return body


async def test_a_delete_on_a_reaches_and_closes_the_room_on_b(cluster, http):
    a, b = cluster
    first = await _chat(http, a, "shared")
    tab_on_b = await RecordingClient().connect(b.url)
    tab_on_a = await RecordingClient().connect(a.url)
    try:
        for tab in (tab_on_a, tab_on_b):
            joined = await tab.call("session_join", {"session_id": "shared"})
            assert joined["ok"], joined
            assert joined["messages"][-1]["content"] == first["full_response"]
        await asyncio.gather(_manager_hears(http, a), _manager_hears(http, b))

        async with http.delete(f"{a.url}/api/chat/sessions/shared") as reply:
            assert reply.status == 200, await reply.text()
        for tab in (tab_on_b, tab_on_a):
            assert await tab.wait_event("session_deleted", within=10) == {"session_id": "shared"}

        # The session id used again: its new stream reaches no former member,
        # on either worker (B would tail it for a member still in its room).
        again = await _chat(http, a, "shared")
        await asyncio.sleep(1.5)  # several tailer polls (250 ms) after the end
        for tab in (tab_on_b, tab_on_a):
            assert tab.of("chat_stream_start", again["stream_id"]) == []
            assert tab.of("chat_token", again["stream_id"]) == []
            assert tab.of("chat_complete", again["stream_id"]) == []
            assert [event for event, _ in tab.events] == ["session_deleted"]
    finally:
        await tab_on_a.close()
        await tab_on_b.close()
