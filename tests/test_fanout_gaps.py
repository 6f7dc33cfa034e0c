"""Catch-up and live delivery with several streams, damaged logs and failing tailers.

Every token reaches a follower exactly once and in full, or the follower is
told why not (`log_unavailable`, a terminal event): never a silent gap, a
spinning replay or a follower left without an end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from chatsock import protocol
from chatsock.app import create_app
from chatsock.fanout import Fanout
from chatsock.outcome import error_terminal
from chatsock.store import StoreUnavailable
from chatsock.store.models import StreamRecord
from chatsock.tailer import Tailers
from chatsock.timing import TAIL_MAX_FAILURES, TAIL_POLL_MS
from tests.fakes.counting_store import CountingStore
from tests.fakes.provider import ScriptedProvider
from tests.fakes.sio_server import RecordingServer
from tests.support.waiting import poll_until


def _seqs(tokens: list[Any]) -> list[int]:
    return [t["seq"] for t in tokens]


def _steady(provider: ScriptedProvider, prefix: str, before: int, after: int) -> asyncio.Event:
    """Enqueue a reply of `before` pieces, a gate, then `after` more pieces."""
    script = provider.enqueue()
    for i in range(before):
        script.text(f"{prefix}{i} ").sleep(0.01)
    gate = script.gate()
    for i in range(after):
        script.text(f"{prefix}{before + i} ").sleep(0.01)
    return gate


async def _until_gated(client: Any, stream_id: str, prefix: str, before: int) -> int:
    """Wait until `client` has every piece before the gate; return the last seq."""
    text = "".join(f"{prefix}{i} " for i in range(before))
    await client.wait_for(lambda _: "".join(t["token"] for t in client.tokens(stream_id)) == text)
    return int(client.tokens(stream_id)[-1]["seq"])


# -- defect 9: a tab joining mid-stream, with two streams running ---------------
async def test_a_tab_joining_mid_stream_gets_every_token_of_each_concurrent_stream_once(
    start_server, connect
):
    provider = ScriptedProvider("fake")
    gates = [_steady(provider, "a", 4, 4), _steady(provider, "b", 4, 4)]
    server = await start_server(
        chain=["fake"],
        providers={"fake": provider},
        limits={"max_streams_per_session": 2},
        stream={"flush_interval_ms": 1},
    )
    first = await connect(server)
    acks = [
        await first.call("chat_stream", {"message": m, "session_id": "duo"}) for m in ("x", "y")
    ]
    ids = [ack["stream_id"] for ack in acks]
    assert all(ack["ok"] for ack in acks)
    await first.wait_for(lambda _: all(len(first.tokens(s)) >= 2 for s in ids))
    second = await connect(server)
    joined = await second.call("session_join", {"session_id": "duo"})
    assert joined["active_stream"]["stream_id"] == ids[0]
    replies = await asyncio.gather(
        *(second.call("chat_resume", {"stream_id": s, "after": 0}) for s in ids)
    )
    assert replies == [{"ok": True, "status": "streaming"}] * 2
    for gate in gates:
        gate.set()
    for stream_id in ids:
        _, done = await second.wait_terminal(stream_id)
        tokens = sorted(second.tokens(stream_id), key=lambda t: t["seq"])
        # Every seq once; the reply rebuilt in seq order is the whole reply.
        assert _seqs(tokens) == list(range(1, len(first.tokens(stream_id)) + 1))
        assert "".join(t["token"] for t in tokens) == done["full_response"]
        assert len(second.of("chat_complete", stream_id)) == 1


async def test_a_tab_starting_its_own_stream_mid_stream_gets_every_token_of_the_other_once(
    start_server, connect
):
    """chat_stream puts its sender in the room while another stream of the session
    runs: that stream reaches it live from then on, and a resume from 0 fills the rest."""
    provider = ScriptedProvider("fake")
    gates = [_steady(provider, "a", 4, 4), _steady(provider, "b", 1, 1)]
    server = await start_server(
        chain=["fake"],
        providers={"fake": provider},
        limits={"max_streams_per_session": 2},
        stream={"flush_interval_ms": 1},
    )
    first = await connect(server)
    running = (await first.call("chat_stream", {"message": "x", "session_id": "own"}))["stream_id"]
    await first.wait_for(lambda _: len(first.tokens(running)) >= 2)
    second = await connect(server)
    ack = await second.call("chat_stream", {"message": "y", "session_id": "own"})
    assert ack["ok"] is True
    reply = await second.call("chat_resume", {"stream_id": running, "after": 0})
    assert reply == {"ok": True, "status": "streaming"}
    for gate in gates:
        gate.set()
    _, done = await second.wait_terminal(running)
    tokens = sorted(second.tokens(running), key=lambda t: t["seq"])
    assert _seqs(tokens) == list(range(1, len(first.tokens(running)) + 1))
    assert "".join(t["token"] for t in tokens) == done["full_response"]


async def test_a_tab_that_joined_mid_stream_and_resumes_after_the_end_gets_nothing_twice(
    server, connect, fake_provider
):
    """The documented join-then-resume flow, with the end in between: the live
    tokens and the end it already had are not sent again."""
    gate = _steady(fake_provider, "t", 3, 3)
    first = await connect(server)
    ack = await first.call("chat_stream", {"message": "hi", "session_id": "late"})
    stream_id = ack["stream_id"]
    await first.wait_for(lambda _: len(first.tokens(stream_id)) >= 2)
    second = await connect(server)
    joined = await second.call("session_join", {"session_id": "late"})
    seen = joined["active_stream"]["seq"]
    gate.set()
    _, done = await second.wait_terminal(stream_id)
    reply = await second.call("chat_resume", {"stream_id": stream_id, "after": 0})
    assert reply == {"ok": True, "status": "complete"}
    tokens = sorted(second.tokens(stream_id), key=lambda t: t["seq"])
    assert _seqs(tokens) == list(range(1, len(first.tokens(stream_id)) + 1))
    assert "".join(t["token"] for t in tokens) == done["full_response"]
    assert len(second.of("chat_complete", stream_id)) == 1
    assert seen >= 2


# -- defect 13: a log missing entries is reported, promptly ---------------------
async def _resume_error(client: Any, stream_id: str) -> dict[str, Any]:
    reply = await client.call("chat_resume", {"stream_id": stream_id, "after": 0}, within=10)
    assert reply["ok"] is False, reply
    error: dict[str, Any] = reply["error"]
    return error


async def test_resume_from_a_log_trimmed_by_its_cap_answers_log_unavailable_promptly(
    aiohttp_server, make_settings, connect
):
    provider = ScriptedProvider("fake")
    gate = _steady(provider, "t", 8, 1)
    store = CountingStore(max_log_entries=3)
    settings = make_settings(chain=["fake"], stream={"flush_interval_ms": 1})
    server = await aiohttp_server(create_app(settings, providers={"fake": provider}, store=store))
    first = await connect(server)
    stream_id = (await first.call("chat_stream", {"message": "hi"}))["stream_id"]
    last = await _until_gated(first, stream_id, "t", 8)
    assert last > 3
    other = await connect(server)
    reads = store.log_reads
    error = await _resume_error(other, stream_id)
    assert error["code"] == "log_unavailable"
    assert f"seq 1..{last - 3}" in error["message"]
    assert "reload the session" in error["message"]
    assert store.log_reads - reads <= 3  # one page read, no loop
    assert other.tokens(stream_id) == []  # nothing misleading was sent first
    gate.set()
    await first.wait_terminal(stream_id)
    # Once ended, the same answer (the log still lacks its start).
    assert (await _resume_error(other, stream_id))["code"] == "log_unavailable"


@pytest.mark.redis
@pytest.mark.parametrize("damage", ["xtrim-start", "xdel-end"])
async def test_resume_from_a_redis_log_missing_entries_answers_log_unavailable_promptly(
    start_server, connect, redis_url, damage
):
    """Eviction or a trim under a running stream used to make the replay loop
    on XRANGE without end (13,699 calls in 2 s), or skip the gap silently."""
    provider = ScriptedProvider("fake")
    gate = _steady(provider, "t", 8, 1)
    server = await start_server(
        chain=["fake"],
        providers={"fake": provider},
        store={"redis_url": redis_url},
        stream={"flush_interval_ms": 1},
    )
    first = await connect(server)
    stream_id = (await first.call("chat_stream", {"message": "hi"}))["stream_id"]
    last = await _until_gated(first, stream_id, "t", 8)
    assert last > 3
    redis = aioredis.Redis.from_url(redis_url)
    try:
        key = f"chatsock:stream:{stream_id}:log"
        if damage == "xtrim-start":
            await redis.xtrim(key, maxlen=3, approximate=False)
            expected = f"seq 1..{last - 3}"
        else:
            await redis.xdel(key, f"0-{last - 1}", f"0-{last}")
            expected = f"seq {last - 1}..{last}"
        calls_before = await _xrange_calls(redis)
        other = await connect(server)
        error = await _resume_error(other, stream_id)
        assert error["code"] == "log_unavailable"
        assert expected in error["message"]
        assert await _xrange_calls(redis) - calls_before <= 5
    finally:
        await redis.aclose()
    gate.set()
    await first.wait_terminal(stream_id)


async def _xrange_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


# -- defect 18: the tailer's bookkeeping ------------------------------------------
@pytest.fixture
async def tailing() -> AsyncIterator[tuple[CountingStore, RecordingServer, Fanout, Tailers]]:
    """A worker's fanout and tailers over a store whose reads can fail, with
    every stream taken as running elsewhere."""
    store = CountingStore()
    sio = RecordingServer()
    fanout = Fanout(sio, store)
    tailers = Tailers(store, fanout, is_local=lambda _: False)
    yield store, sio, fanout, tailers
    await tailers.close()


async def _remote_stream(store: CountingStore, stream_id: str) -> StreamRecord:
    record = StreamRecord(
        stream_id=stream_id,
        session_id="ses_t",
        message_id="msg_t",
        owner="elsewhere",
        provider="fake",
        model="fake-1",
        started_at=protocol.now_iso(),
    )
    registered = await store.register_stream(record, limit=1, lease_s=30, ack={})
    assert registered.accepted
    return record


async def _flush(store: CountingStore, record: StreamRecord, seq: int, text: str) -> None:
    payload = protocol.token(record.stream_id, record.session_id, seq, text, seq)
    await store.append_token(record.stream_id, seq, payload)


def _events(sio: RecordingServer, sid: str, event: str) -> list[Any]:
    return [payload for name, payload in sio.sent[sid] if name == event]


async def test_a_finished_tailer_does_not_drop_the_newer_tailer_of_its_stream(tailing):
    store, sio, fanout, tailers = tailing
    record = await _remote_stream(store, "st_twice")
    sid = await sio.add_socket()
    await sio.enter_room(sid, protocol.session_room(record.session_id))
    await _flush(store, record, 1, "a")
    tailers.ensure(record, start_at=0)
    assert await poll_until(lambda: _events(sio, sid, protocol.TOKEN), within=5)
    # The first tailer gives up (its reads keep failing) and ends its local feed;
    # its follower's connection is slow, so it is still sending that end.
    # (A recorded end is never tailed twice: see the next test.)
    sio.hold = asyncio.Event()
    store.read_failure = RuntimeError("injected bug in a store read")
    patience = TAIL_MAX_FAILURES**2 * TAIL_POLL_MS / 1000 + 10
    assert await poll_until(lambda: record.stream_id not in fanout.feeds, within=patience)
    first = tailers.tasks[record.stream_id]
    # A second tailer of the same stream starts meanwhile; the store is down for it.
    store.read_failure = StoreUnavailable("injected outage")
    tailers.ensure(record, start_at=1)
    second = tailers.tasks[record.stream_id]
    assert second is not first
    await asyncio.sleep(0.05)
    sio.hold.set()
    await asyncio.wait_for(first, 5)
    try:
        await tailers.close()
        assert second.done()
        assert second.cancelled()
    finally:
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)


async def test_a_stream_whose_end_reached_followers_here_is_not_tailed_again(tailing):
    """A session_join or chat_resume holding a record read before the end must not
    start a second tail: it would send the room's members the end a second time."""
    store, sio, _, tailers = tailing
    record = await _remote_stream(store, "st_once")
    sid = await sio.add_socket()
    await sio.enter_room(sid, protocol.session_room(record.session_id))
    await _flush(store, record, 1, "a")
    tailers.ensure(record, start_at=0)
    terminal = error_terminal(record, "provider_error", "boom", "a", retryable=False)
    await store.finish_stream(record, terminal)
    assert await poll_until(lambda: _events(sio, sid, protocol.STREAM_ERROR), within=5)
    assert await poll_until(lambda: not tailers.tasks, within=5)
    assert tailers.ensure(record, start_at=1) is None  # the stale record of a join
    await asyncio.sleep(0.6)
    assert len(_events(sio, sid, protocol.STREAM_ERROR)) == 1
    assert not tailers.tasks


async def test_a_tailer_that_keeps_failing_ends_its_followers_feed_with_a_retryable_error(
    tailing, caplog
):
    store, sio, fanout, tailers = tailing
    record = await _remote_stream(store, "st_broken")
    sid = await sio.add_socket()
    await sio.enter_room(sid, protocol.session_room(record.session_id))
    await _flush(store, record, 1, "Hello ")
    await _flush(store, record, 2, "wor")
    tailers.ensure(record, start_at=0)
    assert await poll_until(lambda: len(_events(sio, sid, protocol.TOKEN)) == 2, within=5)
    store.read_failure = RuntimeError("injected bug in a store read")
    # Backing off 1, 2, ... polls between failures.
    patience = TAIL_MAX_FAILURES**2 * TAIL_POLL_MS / 1000 + 10
    assert await poll_until(lambda: _events(sio, sid, protocol.STREAM_ERROR), within=patience)
    [end] = _events(sio, sid, protocol.STREAM_ERROR)
    assert end["code"] == "internal"
    assert end["retryable"] is True
    assert end["partial"] == "Hello wor"
    assert _events(sio, sid, protocol.COMPLETE) == []
    # This worker's giving up is not the stream's end: nothing is recorded.
    assert await store.get_terminal(record.stream_id) is None
    assert record.stream_id not in fanout.feeds
    assert await poll_until(lambda: not tailers.tasks, within=5)
    failures = [r for r in caplog.records if "tailing st_broken failed" in r.getMessage()]
    assert len(failures) == TAIL_MAX_FAILURES


async def test_a_tailer_that_finds_the_log_missing_entries_ends_its_followers_feed(tailing):
    store, sio, _, tailers = tailing
    store.max_log_entries = 2
    record = await _remote_stream(store, "st_trimmed")
    sid = await sio.add_socket()
    await sio.enter_room(sid, protocol.session_room(record.session_id))
    for seq in range(1, 6):
        await _flush(store, record, seq, f"t{seq} ")
    tailers.ensure(record, start_at=0)  # seq 1..3 are gone already
    assert await poll_until(lambda: _events(sio, sid, protocol.STREAM_ERROR), within=5)
    assert _events(sio, sid, protocol.TOKEN) == []
    [end] = _events(sio, sid, protocol.STREAM_ERROR)
    assert end["code"] == "log_unavailable"
    assert "seq 1..3" in end["error"]
    assert await store.get_terminal(record.stream_id) is None
