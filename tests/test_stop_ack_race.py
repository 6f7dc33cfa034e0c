"""A stop's ack says how the stream really ended, even when the stop races its end.

Found by the soak (bench/soak.py): a chat_stop sent to worker B for a stream
on worker A whose provider had already finished was acked `stopped: true`
when A took longer than 2 s to record the end, and the stream ended complete.
The ack is now the recorded end: `stopped: false` with a complete reply.
"""

from __future__ import annotations

import asyncio
import random
from urllib.parse import urlsplit

import pytest

from chatsock.app import RUNNER
from chatsock.lifecycle import EndReason
from chatsock.providers.base import Delta
from chatsock.timing import STOP_ACK_WAIT_S
from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.invariants import assert_none, check_persisted, check_stop_acks, occupied_slots
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis


async def _worker(start_server, redis_url, name, provider):
    return await start_server(
        chain=["fake"],
        providers={"fake": provider},
        store={"redis_url": redis_url},
        server={"worker_id": name},
    )


async def _until(condition, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


@pytest.fixture
async def proxied(redis_url):
    """A TcpProxy to the shared redis-server, and its URL on the same database."""
    target = urlsplit(redis_url)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        yield proxy, f"redis://127.0.0.1:{proxy.port}{target.path}"


async def _finished_but_unrecorded(start_server, redis_url, proxied):
    """A stream on A whose provider finished while A's Redis link is held, so A has
    decided COMPLETE but cannot record it. Returns (b, client on A, ack, proxy)."""
    proxy, proxied_url = proxied
    provider = ScriptedProvider("fake")
    script = provider.enqueue("all ")
    gate = script.gate()
    script.text("of it")
    a = await _worker(start_server, proxied_url, "worker-a", provider)
    b = await _worker(start_server, redis_url, "worker-b", ScriptedProvider("fake"))
    client = await RecordingClient().connect(url_of(a))
    ack = await client.call("chat_stream", {"message": "go"})
    stream_id = ack["stream_id"]
    await client.wait_for(lambda _: client.tokens(stream_id))
    proxy.pause()
    gate.set()
    stream = a.app[RUNNER].streams[stream_id]
    await _until(lambda: stream.life.reason is EndReason.COMPLETE)
    return b, client, ack, proxy


async def _stop_while_held(proxy: TcpProxy, stop) -> object:
    """Send `stop`, and release A's Redis link only after the old 2 s ack wait."""
    stopping = asyncio.create_task(stop())
    await asyncio.sleep(STOP_ACK_WAIT_S + 0.5)
    proxy.resume()
    return await stopping


async def _assert_complete(client: RecordingClient, ack: dict, acks: list) -> None:
    terminal = await client.wait_terminal(ack["stream_id"])
    event, done = terminal
    assert (event, done["stopped"], done["full_response"]) == ("chat_complete", False, "all of it")
    session = await client.call("session_join", {"session_id": ack["session_id"]})
    problems = check_stop_acks("stream", acks, terminal)
    problems += check_persisted("stream", session["messages"], ack["message_id"], terminal)
    assert_none(problems)


async def test_a_stop_on_b_after_the_provider_finished_on_a_is_acked_complete(
    proxied, start_server, redis_url
):
    b, client, ack, proxy = await _finished_but_unrecorded(start_server, redis_url, proxied)
    stopper = await RecordingClient().connect(url_of(b))
    try:
        stop = await _stop_while_held(
            proxy, lambda: stopper.call("chat_stop", {"stream_id": ack["stream_id"]}, within=20)
        )
        assert stop == {"ok": True, "stopped": False}
        await _assert_complete(client, ack, [stop])
    finally:
        await stopper.close()
        await client.close()


async def test_an_http_stop_on_b_after_the_provider_finished_on_a_is_acked_complete(
    proxied, start_server, redis_url, http
):
    b, client, ack, proxy = await _finished_but_unrecorded(start_server, redis_url, proxied)
    try:

        async def stop() -> object:
            body = {"stream_id": ack["stream_id"]}
            async with http.post(f"{url_of(b)}/api/chat/stream/stop", json=body) as answer:
                return await answer.json()

        stop_ack = await _stop_while_held(proxy, stop)
        assert stop_ack == {"ok": True, "stopped": False}
        await _assert_complete(client, ack, [stop_ack])
    finally:
        await client.close()


async def test_a_local_stop_after_the_finish_reason_leaves_the_reply_complete(
    server, fake_provider, connect
):
    """The provider sent its finish reason but its reply stream has not ended yet
    (a usage chunk or EOF is still to come): the reply is complete, not stopped."""
    script = fake_provider.enqueue("all ", "of it")
    script.raw(Delta(finish_reason="stop"))
    gate = script.gate()  # never set: the stop ends it
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    stream = server.app[RUNNER].streams[ack["stream_id"]]
    await _until(lambda: stream.finish_reason is not None)
    stop = await client.call("chat_stop", {"stream_id": ack["stream_id"]})
    assert stop == {"ok": True, "stopped": False}
    await _assert_complete(client, ack, [stop])
    assert not gate.is_set()


async def test_many_stops_from_either_worker_at_any_point_are_acked_as_they_ended(
    start_server, redis_url
):
    """40 streams on A, each stopped from A or B at a random point of its life,
    some after the provider finished: every ack agrees with the recorded end."""
    rng = random.Random(11)
    count = 40
    provider = ScriptedProvider("fake")
    for _ in range(count):
        script = provider.enqueue()
        for i in range(6):
            script.text(f"w{i} ").sleep(0.01)
    a = await _worker(start_server, redis_url, "worker-a", provider)
    b = await _worker(start_server, redis_url, "worker-b", ScriptedProvider("fake"))
    clients = [await RecordingClient().connect(url_of(a)) for _ in range(count)]
    stoppers = [await RecordingClient().connect(url_of(worker)) for worker in (a, b)]
    try:

        async def one(client: RecordingClient) -> list[str]:
            ack = await client.call("chat_stream", {"message": "go"})
            await asyncio.sleep(rng.uniform(0, 0.15))
            stopper = rng.choice(stoppers)
            stop = await stopper.call("chat_stop", {"stream_id": ack["stream_id"]}, within=20)
            terminal = await client.wait_terminal(ack["stream_id"], within=20)
            session = await client.call("session_join", {"session_id": ack["session_id"]})
            label = ack["stream_id"]
            return check_stop_acks(label, [stop], terminal) + check_persisted(
                label, session["messages"], ack["message_id"], terminal
            )

        results = await asyncio.gather(*(one(client) for client in clients))
        assert_none([problem for problems in results for problem in problems])
        assert a.app[RUNNER].streams == {}
        assert_none(await occupied_slots(redis_url, "chatsock"))
    finally:
        for client in [*clients, *stoppers]:
            await client.close()
