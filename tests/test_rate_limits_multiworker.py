"""Rate limits across two real workers on one Redis: the 31st `chat_stream` of a
minute is refused whichever worker receives it, over Socket.IO and HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import jwt
import pytest
import socketio

from tests.support.clients import RecordingClient
from tests.support.process import Worker

pytestmark = pytest.mark.redis

SECRET = "limits-test-secret-0123456789-0123456789"


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600}, SECRET, "HS256")


@pytest.fixture
def workers(redis_url: str) -> Iterator[list[Worker]]:
    env = {
        "REDIS_URL": redis_url,
        "CHATSOCK_AUTH__MODE": "jwt",
        "CHATSOCK_JWT_SECRET": SECRET,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "100000",
        "CHATSOCK_LIMITS__STREAM_STARTS_PER_MINUTE": "30",  # the default, named
        "CHATSOCK_LIMITS__CONNECTIONS_PER_IP": "5",
    }
    started = [Worker(env=env).start(), Worker(env=env).start()]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


async def test_the_31st_start_is_refused_on_whichever_worker(workers: list[Worker]) -> None:
    auth = {"token": token("alice")}
    clients = [await RecordingClient().connect(w.url, auth=auth) for w in workers]
    try:
        for n in range(30):
            client = clients[n % 2]
            ack = await client.call("chat_stream", {"message": f"m{n}"})
            assert ack["ok"], (n, ack)
            assert (await client.wait_terminal(ack["stream_id"]))[0] == "chat_complete"
        for client in clients:
            refused = await client.call("chat_stream", {"message": "one more"})
            assert refused["error"]["code"] == "rate_limited"
            assert refused["error"]["retry_after"] >= 1
        headers = {"Authorization": f"Bearer {token('alice')}"}
        async with aiohttp.ClientSession() as http:
            for worker in workers:
                url = f"{worker.url}/api/chat/stream"
                async with http.post(url, json={"message": "x"}, headers=headers) as response:
                    assert response.status == 429
                    assert int(response.headers["Retry-After"]) >= 1
    finally:
        for client in clients:
            await client.close()


async def test_connections_per_ip_are_counted_across_workers(workers: list[Worker]) -> None:
    clients: list[RecordingClient] = []
    try:
        for n in range(5):
            auth = {"token": token(f"user{n}")}
            clients.append(await RecordingClient().connect(workers[n % 2].url, auth=auth))
        sixth = RecordingClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sixth.connect(workers[1].url, auth={"token": token("user5")})
        await sixth.close()
        assert sixth.connect_errors[0]["data"] == {"code": "rate_limited"}
        await clients.pop().close()
        # The worker frees the hold once it sees the disconnect: a few tries at most.
        for _ in range(50):
            again = RecordingClient()
            try:
                clients.append(await again.connect(workers[0].url, auth={"token": token("u6")}))
                break
            except socketio.exceptions.ConnectionError:
                await again.close()
                await asyncio.sleep(0.1)
        else:
            pytest.fail("a freed connection slot was never given back")
    finally:
        for client in clients:
            await client.close()
