"""A stream's owner and a worker that takes it for lost never both store a reply.

When Redis was away longer than the owner's lease, another worker can take a
live stream for lost just as its owner finishes it. Whoever claims the end
first persists the reply and records the end; the other relays that record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import STORE, create_app
from chatsock.ending import declare_lost
from chatsock.store.models import Terminal
from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.fakes.store import FlakyStore
from tests.support.clients import RecordingClient


@pytest.fixture
async def running(make_settings) -> AsyncIterator[tuple[FlakyStore, RecordingClient, str, str]]:
    """A stream held after its first token: (store, client, stream_id, session_id)."""
    provider = ScriptedProvider("fake")
    script = provider.enqueue("partial ")
    script.gate()
    script.text("never sent")
    store = FlakyStore()
    app = create_app(make_settings(chain=["fake"]), providers={"fake": provider}, store=store)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = await RecordingClient().connect(url_of(server))
    try:
        ack = await client.call("chat_stream", {"message": "go"})
        await client.wait_for(lambda _: client.tokens(ack["stream_id"]))
        yield store, client, ack["stream_id"], ack["session_id"]
    finally:
        await client.close()
        await server.close()


async def _assistant_messages(store: FlakyStore, session_id: str) -> list[tuple[str, str]]:
    return [
        (m.status, m.content) for m in await store.get_messages(session_id) if m.role == "assistant"
    ]


async def test_taken_for_lost_while_the_owner_persists_stores_the_reply_once(running):
    store, client, stream_id, session_id = running
    record = await store.get_stream(stream_id)
    assert record is not None
    declared: list[asyncio.Task[Terminal]] = []

    async def another_worker_takes_it_for_lost() -> None:
        declared.append(asyncio.create_task(declare_lost(store, record)))
        await asyncio.sleep(0.05)  # it runs while the owner is mid-persist

    store.before_assistant_message = another_worker_takes_it_for_lost
    assert await client.call("chat_stop", {"stream_id": stream_id}) == {"ok": True, "stopped": True}
    event, done = await client.wait_terminal(stream_id)
    assert (event, done["stopped"], done["full_response"]) == ("chat_complete", True, "partial ")
    relayed = await declared[0]
    assert (relayed.event, relayed.payload["stopped"]) == ("chat_complete", True)
    assert await _assistant_messages(store, session_id) == [("stopped", "partial ")]


async def test_taken_for_lost_first_the_owner_relays_that_end(running):
    store, client, stream_id, session_id = running
    record = await store.get_stream(stream_id)
    assert record is not None
    lost = await declare_lost(store, record)
    assert lost.payload["code"] == "worker_lost"
    # The ack is the recorded end (worker_lost), not the stop that was decided here.
    stop = await client.call("chat_stop", {"stream_id": stream_id})
    assert stop == {"ok": True, "stopped": False}
    event, err = await client.wait_terminal(stream_id)
    assert (event, err["code"], err["partial"]) == ("chat_stream_error", "worker_lost", "partial ")
    assert await _assistant_messages(store, session_id) == [("error", "partial ")]


@pytest.mark.redis
async def test_an_owner_ends_a_stream_recorded_lost_elsewhere_with_that_record(
    start_server, connect, redis_url
):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("partial ")
    gate = script.gate()
    script.text("never sent")
    server = await start_server(
        chain=["fake"],
        providers={"fake": provider},
        store={"redis_url": redis_url},
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    stream_id = ack["stream_id"]
    await client.wait_for(lambda _: client.tokens(stream_id))
    store = server.app[STORE]
    record = await store.get_stream(stream_id)
    assert record is not None
    await declare_lost(store, record)  # as a worker would that found the lease lapsed

    # The owner notices at its next stop-flag check (every 0.5 s).
    event, err = await client.wait_terminal(stream_id, within=3)
    assert (event, err["code"], err["partial"]) == ("chat_stream_error", "worker_lost", "partial ")
    assert provider.closed == [True]  # and it no longer generates upstream
    assert not gate.is_set()
    messages = await store.get_messages(ack["session_id"])
    assert [(m.role, m.status) for m in messages] == [("user", "complete"), ("assistant", "error")]


async def test_a_claimant_that_never_records_the_end_does_not_hold_the_slot(running):
    store, client, stream_id, session_id = running
    # A worker claimed the end, then failed before recording it.
    assert await store.claim_end(stream_id, "lost-ghost") is True
    assert await client.call("chat_stop", {"stream_id": stream_id}) == {"ok": True, "stopped": True}
    event, done = await client.wait_terminal(stream_id, within=15)  # after END_WAIT_S
    assert (event, done["stopped"], done["full_response"]) == ("chat_complete", True, "partial ")
    assert await store.get_terminal(stream_id) is not None
    # The session's only stream slot is free again.
    again = await client.call("chat_stream", {"message": "next", "session_id": session_id})
    assert again["ok"], again
    event, _ = await client.wait_terminal(again["stream_id"])
    assert event == "chat_complete"


async def test_after_a_stream_is_taken_for_lost_nothing_more_reaches_its_log(start_server, connect):
    """An owner cut off from the store keeps generating until it sees the stop flag;
    once another worker has claimed the end and read the partial, the owner's flushes
    are refused, so no follower ever gets text beyond the recorded partial."""
    provider = ScriptedProvider("fake")
    script = provider.enqueue("partial ")
    gate = script.gate()
    script.text("too late")
    script.gate()  # holds the stream open after the late text
    server = await start_server(chain=["fake"], providers={"fake": provider})
    store = server.app[STORE]
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    stream_id = ack["stream_id"]
    await client.wait_for(lambda _: client.tokens(stream_id))
    record = await store.get_stream(stream_id)
    assert record is not None
    lost = await declare_lost(store, record)
    gate.set()  # the owner gets more text before its next stop-flag check
    event, err = await client.wait_terminal(stream_id)
    assert (event, err["code"]) == ("chat_stream_error", "worker_lost")
    sent = "".join(t["token"] for t in client.tokens(stream_id))
    assert sent == err["partial"] == lost.payload["partial"] == "partial "
    assert [e.seq for e in await store.read_tokens(stream_id, 0)] == [1]
