"""A stream whose store stays away ends with an explicit error, never with silence."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from chatsock.app import MANAGER
from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.leaks import leaked_resources
from tests.support.redis_server import RedisServer
from tests.support.waiting import poll_until

pytestmark = pytest.mark.redis


async def test_long_redis_outage_ends_the_stream_with_store_unavailable(
    start_server, connect, private_redis_server: RedisServer
):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("before ")
    gate = script.gate()
    script.text("during the outage")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, store={"redis_url": private_redis_server.url}
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi"})
    sid = ack["stream_id"]
    await client.wait_for(lambda _: client.tokens(sid))
    await asyncio.to_thread(private_redis_server.stop, kill=True)
    try:
        gate.set()  # the next flush cannot be logged: retried for 3 s, then given up
        event, err = await client.wait_terminal(sid, within=30)
        assert event == "chat_stream_error"
        assert err["code"] == "store_unavailable"
        assert err["retryable"] is True
        assert err["error"] == "the store is unavailable; retry shortly"  # no Redis URL
        assert err["partial"] == "".join(t["token"] for t in client.tokens(sid)) == "before "
        assert provider.closed == [True]
    finally:
        await asyncio.to_thread(private_redis_server.start)
    # Back again: the same worker serves new streams without a restart.
    provider.enqueue("after")
    fresh = await client.call("chat_stream", {"message": "again"})
    assert fresh["ok"], fresh
    event, done = await client.wait_terminal(fresh["stream_id"], within=30)
    assert (event, done["full_response"]) == ("chat_complete", "after")
    # The background loops rode the outage out: none of them failed.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url_of(server)}/readyz") as reply:
            loops = (await reply.json())["loops"]
    assert loops
    assert {name: status["failures"] for name, status in loops.items()} == dict.fromkeys(loops, 0)


async def test_the_socketio_manager_closes_the_clients_it_replaces(
    start_server, connect, private_redis_server: RedisServer
):
    """python-socketio's manager reconnects by building a new Redis client and
    dropping the old one unclosed; over a restart that leaks sockets. Ours
    closes every replaced client, and all of them at shutdown."""
    server = await start_server(store={"redis_url": private_redis_server.url})
    manager = server.app[MANAGER]
    client = await connect(server)

    def hearing() -> bool:
        deaf = manager.deaf_for()
        return deaf is not None and deaf < 1.5

    assert await poll_until(hearing, within=10)
    before = manager.replaced
    await asyncio.to_thread(private_redis_server.stop, kill=True)
    await asyncio.sleep(2.5)  # heartbeats fail and the listener retries: clients get replaced
    await asyncio.to_thread(private_redis_server.start)
    assert await poll_until(hearing, within=20)
    # The outage did replace the listener's client (by a retry or by the watchdog),
    # so the leak check below is about clients that were really replaced.
    assert manager.replaced > before
    await client.close()
    await server.close()
    assert leaked_resources() == []
