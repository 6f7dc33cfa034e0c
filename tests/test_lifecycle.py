"""A stream's life under concurrency: every start, stop and end is decided once.

Each test here pins a defect of issue 8 that the single-stream tests never
saw: it failed on the code before the fix.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import LOOPS, RUNNER, STORE, create_app
from chatsock.providers.base import Delta
from chatsock.requests import ChatStreamRequest
from chatsock.store.models import StreamRecord
from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.fakes.store import FlakyStore
from tests.support.clients import RecordingClient


def _text(tokens: list[dict]) -> str:
    return "".join(t["token"] for t in tokens)


@pytest.mark.redis
async def test_leases_are_kept_while_many_streams_start_and_end(start_server, connect, redis_url):
    """Defect 1: the lease upkeep iterated the live dict across awaits and died on the
    first stream that started or ended meanwhile; every lease then lapsed."""
    provider = ScriptedProvider("fake")
    long = provider.enqueue("first ")
    gate = long.gate()
    long.text("last")
    server = await start_server(
        chain=["fake"],
        providers={"fake": provider},
        store={"redis_url": redis_url},
        stream={"lease_s": 1.5},
    )
    store = server.app[STORE]
    holder = await connect(server)
    ack = await holder.call("chat_stream", {"message": "long"})
    await holder.wait_for(lambda _: holder.tokens(ack["stream_id"]))

    churners = [await connect(server) for _ in range(6)]

    async def churn(client) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4.0  # well past two lease periods
        while loop.time() < deadline:
            provider.enqueue("a", "b")
            short = await client.call("chat_stream", {"message": "short"})
            assert short["ok"], short
            await client.wait_terminal(short["stream_id"])

    await asyncio.gather(*(churn(c) for c in churners))
    assert await store.lease_alive(ack["stream_id"])
    # The upkeep never failed (a supervisor restart would hide a crash from the lease).
    assert server.app[LOOPS].status()["lease upkeep"].failures == 0
    gate.set()
    event, done = await holder.wait_terminal(ack["stream_id"])
    assert (event, done["full_response"]) == ("chat_complete", "first last")


async def test_a_refused_chat_stream_does_not_join_the_room(server, fake_provider, connect):
    """Defect 2: a caller refused with invalid_request or too_many_streams used to be
    put in the session's room first, and received another client's reply."""
    script = fake_provider.enqueue("secret ")
    gate = script.gate()
    script.text("reply")
    owner, intruder = await connect(server), await connect(server)
    ack = await owner.call("chat_stream", {"message": "mine"})
    session_id = ack["session_id"]
    await owner.wait_for(lambda _: owner.tokens(ack["stream_id"]))

    unknown = await intruder.call(
        "chat_stream", {"message": "x", "session_id": session_id, "provider": "nope"}
    )
    assert unknown["error"]["code"] == "invalid_request"
    full = await intruder.call("chat_stream", {"message": "x", "session_id": session_id})
    assert full["error"]["code"] == "too_many_streams"
    gate.set()
    await owner.wait_terminal(ack["stream_id"])
    await asyncio.sleep(0.2)
    assert [e for e, _ in intruder.events] == []


async def test_non_string_text_from_a_provider_still_ends_the_stream(
    server, fake_provider, connect
):
    """Defect 3: a list as delta text passed through and broke the end: no terminal
    event, followers hung and the session's slot stayed held."""
    script = fake_provider.enqueue("before ")
    script.raw(Delta(["not", "text"]))  # type: ignore[arg-type]
    script.text("after")
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    event, done = await client.wait_terminal(ack["stream_id"], within=5)
    assert event == "chat_complete"
    assert done["full_response"] == "before after" == _text(client.tokens(ack["stream_id"]))
    again = await client.call("chat_stream", {"message": "next", "session_id": ack["session_id"]})
    assert again["ok"], again


@pytest.fixture
async def flaky(make_settings):
    """An in-process worker on a FlakyStore: (server, store, provider, client)."""
    provider = ScriptedProvider("fake")
    store = FlakyStore()
    app = create_app(make_settings(chain=["fake"]), providers={"fake": provider}, store=store)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = await RecordingClient().connect(url_of(server))
    try:
        yield server, store, provider, client
    finally:
        await client.close()
        await server.close()


async def test_a_stop_after_the_provider_finished_leaves_the_reply_complete(flaky):
    """Defect 7: a stop that arrived after the provider finished (here: while the
    stream claims its end) was acked stopped: true and stored the reply as stopped."""
    server, store, provider, client = flaky
    provider.enqueue("all ", "of it")
    acks = []

    async def stop_now() -> None:
        (stream_id,) = server.app[RUNNER].streams  # the one finishing now
        acks.append(await client.call("chat_stop", {"stream_id": stream_id}))

    store.before_end_claim = stop_now
    ack = await client.call("chat_stream", {"message": "go"})
    event, done = await client.wait_terminal(ack["stream_id"])
    assert acks == [{"ok": True, "stopped": False}]
    assert (event, done["stopped"], done["full_response"]) == ("chat_complete", False, "all of it")
    messages = await store.get_messages(ack["session_id"])
    assert [(m.role, m.status) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]


async def test_a_shutdown_after_the_provider_finished_leaves_the_reply_complete(flaky):
    """Defect 7: a shutdown in the same window turned a complete reply into a retryable
    server_shutdown error."""
    server, store, provider, client = flaky
    provider.enqueue("all ", "of it")
    shutting: list[asyncio.Task[None]] = []

    async def shut_down_now() -> None:
        shutting.append(asyncio.create_task(server.app[RUNNER].shutdown()))
        await asyncio.sleep(0.05)  # shutdown() has ended every open stream by now

    store.before_end_claim = shut_down_now
    ack = await client.call("chat_stream", {"message": "go"})
    event, done = await client.wait_terminal(ack["stream_id"])
    assert (event, done["stopped"], done["full_response"]) == ("chat_complete", False, "all of it")
    await shutting[0]


async def test_a_failed_start_leaves_nothing_held_and_a_retry_runs(flaky):
    """Defect 5: a store failure after registration left a registered stream with no
    task; a retry with the same client_message_id answered ok for a stream that never
    ran, and the user's message was lost."""
    server, store, provider, client = flaky
    seed = await client.call("chat_stream", {"message": "make the session"})
    await client.wait_terminal(seed["stream_id"])
    session_id = seed["session_id"]
    body = {"message": "important", "session_id": session_id, "client_message_id": "c-7"}
    store.fail_user_messages = True
    failed = await client.call("chat_stream", body)
    assert failed["error"]["code"] == "store_unavailable"
    assert await store.active_streams(session_id) == []
    assert await store.find_client_message(session_id, "c-7") is None
    assert server.app[RUNNER].streams == {}
    store.fail_user_messages = False
    provider.enqueue("answered")
    retry = await client.call("chat_stream", body)
    assert retry["ok"], retry
    event, done = await client.wait_terminal(retry["stream_id"])
    assert (event, done["full_response"]) == ("chat_complete", "answered")
    users = [m.content for m in await store.get_messages(session_id) if m.role == "user"]
    assert users == ["make the session", "important"]


async def test_a_reply_whose_write_reply_was_lost_is_stored_once(flaky):
    """Defect 6: add_message was retried though not idempotent; a blip after the
    write landed stored the same reply twice."""
    _, store, provider, client = flaky
    provider.enqueue("stored once")
    store.lose_next_assistant_replies = 1
    ack = await client.call("chat_stream", {"message": "go"})
    event, done = await client.wait_terminal(ack["stream_id"])
    assert (event, done["persist_failed"]) == ("chat_complete", False)
    replies = [m for m in await store.get_messages(ack["session_id"]) if m.role == "assistant"]
    assert [(m.message_id, m.content) for m in replies] == [(ack["message_id"], "stored once")]


async def test_a_start_in_flight_at_shutdown_is_ended_not_left_registered(flaky):
    """Defect 8: a start() in flight when shutdown() ran registered a stream that was
    never ended: its slot stayed held."""
    server, store, _, client = flaky
    runner = server.app[RUNNER]
    shutting: list[asyncio.Task[None]] = []

    async def shut_down_now() -> None:
        shutting.append(asyncio.create_task(runner.shutdown()))
        await asyncio.sleep(0.05)

    store.before_user_message = shut_down_now
    refused = await client.call("chat_stream", {"message": "too late", "client_message_id": "c"})
    assert refused["error"]["code"] == "server_shutdown"
    await shutting[0]
    assert runner.streams == {}
    assert runner.task_count == 0
    assert await store.active_streams() == []


async def test_a_stop_before_the_stream_task_runs_is_honoured(server, fake_provider, connect):
    """Defect 8: a stop between start() and the task's first step was ignored and the
    stream ran to its end."""
    client = await connect(server)
    joined = await client.call("chat_stream", {"message": "make the session"})
    await client.wait_terminal(joined["stream_id"])
    runner = server.app[RUNNER]
    fake_provider.requests.clear()
    request = ChatStreamRequest(message="never asked", session_id=joined["session_id"])
    ack = await runner.start(request, joined["session_id"])
    assert await runner.stop(ack["stream_id"]) is True  # no await in between: not yet run
    event, done = await client.wait_terminal(ack["stream_id"])
    assert (event, done["stopped"], done["full_response"]) == ("chat_complete", True, "")
    assert fake_provider.requests == []  # the provider was never called


async def test_a_stream_longer_than_log_ttl_keeps_its_record_and_slot(start_server, connect):
    """Defect 10: a stream that outlived stream.log_ttl lost its record and slot while
    running: chat_stop answered not_found and a second stream was let in."""
    provider = ScriptedProvider("fake")
    script = provider.enqueue("slow ")
    gate = script.gate()
    script.text("end")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, stream={"log_ttl": 2, "lease_s": 1.5}
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    await client.wait_for(lambda _: client.tokens(ack["stream_id"]))
    await asyncio.sleep(3.5)
    second = await client.call("chat_stream", {"message": "x", "session_id": ack["session_id"]})
    assert second["error"]["code"] == "too_many_streams"
    assert await client.call("chat_stop", {"stream_id": ack["stream_id"]}) == {
        "ok": True,
        "stopped": True,
    }
    event, done = await client.wait_terminal(ack["stream_id"])
    assert (event, done["stopped"], done["full_response"]) == ("chat_complete", True, "slow ")
    gate.set()


@pytest.mark.redis
async def test_a_retry_during_the_first_request_gets_the_first_ack(
    start_server, connect, redis_url
):
    """Defect 17: the id was claimed after the slot, so a retry racing the first request
    with the same client_message_id got too_many_streams. (On Redis: the memory store
    never yields inside start(), so the requests cannot interleave there.)"""
    server = await start_server(
        chain=["fake"], providers={"fake": ScriptedProvider("fake")}, store={"redis_url": redis_url}
    )
    first, retry = await connect(server), await connect(server)
    seed = await first.call("chat_stream", {"message": "make the session"})
    await first.wait_terminal(seed["stream_id"])
    body = {"message": "once", "session_id": seed["session_id"], "client_message_id": "c-1"}
    acks = await asyncio.gather(first.call("chat_stream", body), retry.call("chat_stream", body))
    assert all(a["ok"] for a in acks), acks
    assert acks[0]["stream_id"] == acks[1]["stream_id"]
    await first.wait_terminal(acks[0]["stream_id"])
    await retry.wait_terminal(acks[0]["stream_id"])
    messages = await server.app[STORE].get_messages(seed["session_id"])
    assert [m.content for m in messages if m.role == "user"] == ["make the session", "once"]


@pytest.mark.redis
async def test_stopping_a_stream_whose_owner_died_records_it_lost(start_server, connect, redis_url):
    """Defect 16: chat_stop on a stream whose owner died answered stopped: true and set a
    flag nobody reads; the stream stayed unended."""
    server = await start_server(store={"redis_url": redis_url}, stream={"lease_s": 1.5})
    store = server.app[STORE]
    client = await connect(server)
    seed = await client.call("chat_stream", {"message": "make the session"})
    await client.wait_terminal(seed["stream_id"], within=20)
    ghost = StreamRecord(
        stream_id="st_ghost",
        session_id=seed["session_id"],
        message_id="msg_ghost",
        owner="a-dead-worker",
        provider="demo",
        model="demo-1",
        started_at="2026-01-01T00:00:00.000Z",
    )
    registered = await store.register_stream(ghost, limit=1, lease_s=1, ack={"ok": True})
    assert registered.accepted
    await asyncio.sleep(1.6)  # the dead owner's lease lapses
    assert await client.call("chat_stop", {"stream_id": "st_ghost"}) == {
        "ok": True,
        "stopped": False,
    }
    terminal = await store.get_terminal("st_ghost")
    assert terminal is not None
    assert terminal.payload["code"] == "worker_lost"


async def test_a_hard_cancel_at_shutdown_mid_finish_still_sends_the_end(make_settings):
    """Review finding: when the shutdown grace ran out while a stream was claiming its
    end (a slow store), its followers got no terminal and nothing was kept to record."""
    provider = ScriptedProvider("fake")
    provider.enqueue("said ", "this")
    store = FlakyStore()
    settings = make_settings(chain=["fake"], server={"shutdown_grace_s": 0.3})
    app = create_app(settings, providers={"fake": provider}, store=store)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = await RecordingClient().connect(url_of(server))
    runner = app[RUNNER]
    stalled = asyncio.Event()

    async def stall() -> None:
        stalled.set()
        await asyncio.sleep(30)  # the store hangs on the end claim

    store.before_end_claim = stall
    try:
        ack = await client.call("chat_stream", {"message": "go"})
        await asyncio.wait_for(stalled.wait(), 5)
        await runner.shutdown()
        event, end = await client.wait_terminal(ack["stream_id"], within=5)
        # The reply was still buffered, never sent: an honest, retryable error.
        assert (event, end["code"], end["partial"], end["retryable"]) == (
            "chat_stream_error",
            "server_shutdown",
            "",
            True,
        )
        assert runner.streams == {}
        # What the store owed was kept, and shutdown's last retry recorded it.
        assert runner.ends.pending == {}
        terminal = await store.get_terminal(ack["stream_id"])
        assert terminal is not None
        assert terminal.payload["code"] == "server_shutdown"
        replies = [m for m in await store.get_messages(ack["session_id"]) if m.role == "assistant"]
        assert [(m.status, m.content, m.error_code) for m in replies] == [
            ("error", "", "server_shutdown")
        ]
    finally:
        await client.close()
        await server.close()
