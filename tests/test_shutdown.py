"""Shutdown ends open streams with server_shutdown, partial included, and persists them."""

from __future__ import annotations

import asyncio
import signal

from aiohttp.test_utils import TestServer

from chatsock.app import FANOUT, create_app
from chatsock.store.memory import MemoryStore
from tests.fakes.provider import ScriptedProvider
from tests.fakes.store import FlakyStore
from tests.support.clients import RecordingClient
from tests.support.process import Worker


async def test_app_shutdown_sends_server_shutdown_and_persists_partial(make_settings):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("so far ")
    gate = script.gate()
    store = MemoryStore()
    app = create_app(
        make_settings(chain=["fake"], server={"shutdown_grace_s": 2}),
        providers={"fake": provider},
        store=store,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = await RecordingClient().connect(f"http://127.0.0.1:{server.port}")
    try:
        ack = await client.call("chat_stream", {"message": "hi", "session_id": "bye"})
        await client.wait_for(lambda _: client.tokens(ack["stream_id"]))
        await server.close()
        err = client.of("chat_stream_error", ack["stream_id"])
        assert len(err) == 1
        assert (err[0]["code"], err[0]["partial"], err[0]["retryable"]) == (
            "server_shutdown",
            "so far ",
            True,
        )
        assert provider.closed == [True]
        assert not gate.is_set()
        messages = await store.get_messages("bye")
        assert (messages[-1].status, messages[-1].content, messages[-1].error_code) == (
            "error",
            "so far ",
            "server_shutdown",
        )
        terminal = await store.get_terminal(ack["stream_id"])
        assert terminal is not None
        assert terminal.payload["code"] == "server_shutdown"
    finally:
        await client.close()


async def test_sigterm_on_a_real_worker_ends_streams_with_server_shutdown():
    # No drain: the stream is cut at once (tests/test_drain.py covers the drain).
    worker = Worker(
        env={"CHATSOCK_DEMO_TOKENS_PER_SECOND": "20", "CHATSOCK_SERVER__DRAIN_TIMEOUT_S": "0"}
    ).start()
    client = RecordingClient()
    try:
        await client.connect(worker.url)
        ack = await client.call("chat_stream", {"message": "a long demo reply please"})
        await client.wait_for(lambda _: len(client.tokens(ack["stream_id"])) >= 2)
        worker.signal(signal.SIGTERM)
        event, err = await client.wait_terminal(ack["stream_id"], within=15)
        assert event == "chat_stream_error"
        assert err["code"] == "server_shutdown"
        assert err["partial"] == "".join(t["token"] for t in client.tokens(ack["stream_id"]))
        assert await asyncio.to_thread(worker.wait, 15) == 0
    finally:
        await client.close()
        worker.stop()


async def test_a_flush_in_flight_when_shutdown_cancels_its_stream_sends_nothing_after_its_end(
    make_settings,
):
    """Shutdown's grace runs out while a tick's append is stuck (a stalled store):
    the stream is cancelled and its followers get its end with the text they hold.
    When the append then completes, its token must not follow the terminal."""
    provider = ScriptedProvider("fake")
    script = provider.enqueue("so far ")
    more = script.gate()
    script.text(" and then some")
    script.gate()  # never set: the stream runs until shutdown ends it
    store = FlakyStore()
    app = create_app(
        make_settings(chain=["fake"], server={"shutdown_grace_s": 0.5}),
        providers={"fake": provider},
        store=store,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = await RecordingClient().connect(f"http://127.0.0.1:{server.port}")
    stuck = asyncio.Event()
    try:
        ack = await client.call("chat_stream", {"message": "hi", "session_id": "stall"})
        await client.wait_for(lambda _: client.tokens(ack["stream_id"]))
        feed = app[FANOUT].feeds[ack["stream_id"]]

        async def stall_until_the_end_is_sent() -> None:
            stuck.set()
            await feed.ended.wait()

        store.before_log_append = stall_until_the_end_is_sent
        more.set()
        await asyncio.wait_for(stuck.wait(), 10)
        await server.close()
        event, err = await client.wait_terminal(ack["stream_id"])
        assert (event, err["code"], err["partial"]) == ("chat_stream_error", "server_shutdown",
                                                        "so far ")  # fmt: skip
        await asyncio.sleep(0.2)  # the stuck append completes meanwhile
        names = [name for name, data in client.events if data.get("stream_id") == ack["stream_id"]]
        assert names[-1] == "chat_stream_error", names
        assert [t["token"] for t in client.tokens(ack["stream_id"])] == ["so far "]
    finally:
        await client.close()
