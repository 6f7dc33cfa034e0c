"""The store contract, run against every backend (memory and a real redis-server).

Then the Redis backend's own promises: errors that say what to do without
leaking the password, recovery after a Redis restart, blocking reads for
cross-worker tailing, and pub/sub that re-subscribes by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatsock.store.base import Store, StoreUnavailable
from chatsock.store.memory import MemoryStore
from chatsock.store.models import LogEntry, Message, SessionInfo, StreamRecord, Terminal
from chatsock.store.redis import RedisStore, mask_url
from tests.support.fixtures import private_redis_server, redis_server, redis_url  # noqa: F401
from tests.support.redis_server import RedisServer, free_port

StoreFactory = Callable[..., Awaitable[Store]]

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> str:
    """An ISO timestamp `seconds` after a fixed origin, so tests control ordering."""
    return (_EPOCH + timedelta(seconds=seconds)).isoformat()


def session(session_id: str, t: float = 0) -> SessionInfo:
    return SessionInfo(session_id, created_at=at(t), updated_at=at(t))


def message(n: int, content: str = "", role: str = "user", t: float = 0) -> Message:
    return Message(f"msg-{n}", role, content or f"message {n}", at(t))  # type: ignore[arg-type]


def stream(stream_id: str, session_id: str = "s1", t: float = 0) -> StreamRecord:
    return StreamRecord(
        stream_id, session_id, f"msg-{stream_id}", "worker-a", "fake", "m", started_at=at(t)
    )


def terminal(status: str = "complete") -> Terminal:
    return Terminal(status, "chat_done", {"stream_id": "x", "status": status})  # type: ignore[arg-type]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Build stores of one backend with any Store options; all closed after the test."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    stores: list[Store] = []

    async def make(**options: Any) -> Store:
        store: Store = RedisStore(url, **options) if url else MemoryStore(**options)
        await store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()


# -- sessions -------------------------------------------------------------


async def test_ensure_session_creates_once_and_then_returns_the_stored_header(store: Store) -> None:
    first = await store.ensure_session(SessionInfo("s1", at(0), at(0), owner="alice"))
    again = await store.ensure_session(SessionInfo("s1", at(9), at(9), owner="mallory"))
    assert first.owner == "alice"
    assert again == first
    assert await store.get_session("s1") == first
    assert await store.get_session("nope") is None


async def test_list_sessions_most_recent_first_titled_by_first_user_message(store: Store) -> None:
    await store.ensure_session(session("s1", t=0))
    await store.ensure_session(session("s2", t=1))
    await store.ensure_session(session("s3", t=2))
    assert [s.session_id for s in await store.list_sessions()] == ["s3", "s2", "s1"]

    await store.add_message("s1", message(1, "ignored: assistant", role="assistant", t=5))
    await store.add_message("s1", message(2, "  Hello\n\n  world   again ", t=6))
    await store.add_message("s1", message(3, "a later question", t=7))
    listed = await store.list_sessions()
    assert [s.session_id for s in listed] == ["s1", "s3", "s2"]
    assert listed[0].title == "Hello world again"
    assert listed[0].updated_at == at(7)
    assert [s.session_id for s in await store.list_sessions(limit=2)] == ["s1", "s3"]


async def test_title_is_cut_to_80_characters(store: Store) -> None:
    await store.ensure_session(session("s1"))
    await store.add_message("s1", message(1, "x" * 200, t=1))
    found = await store.get_session("s1")
    assert found is not None
    assert found.title == "x" * 80


async def test_delete_session_removes_it_its_messages_and_acks_once(store: Store) -> None:
    await store.ensure_session(session("s1"))
    await store.ensure_session(session("s2", t=1))
    await store.add_message("s1", message(1, t=2))
    await store.claim_client_message("s1", "c1", {"stream_id": "a"})
    await store.claim_client_message("s2", "c1", {"stream_id": "b"})
    assert await store.delete_session("s1") is True
    assert await store.delete_session("s1") is False
    assert await store.get_session("s1") is None
    assert await store.get_messages("s1") == []
    assert await store.find_client_message("s1", "c1") is None
    assert await store.find_client_message("s2", "c1") == {"stream_id": "b"}
    assert [s.session_id for s in await store.list_sessions()] == ["s2"]


async def test_messages_keep_append_order_and_the_newest_up_to_the_cap(
    make_store: StoreFactory,
) -> None:
    store = await make_store(max_messages=3)
    await store.ensure_session(session("s1"))
    for n in range(1, 6):
        await store.add_message("s1", message(n, t=n))
    assert [m.message_id for m in await store.get_messages("s1")] == ["msg-3", "msg-4", "msg-5"]
    assert await store.count_messages("s1") == 3
    assert await store.count_messages("other") == 0


async def test_messages_round_trip_every_field(store: Store) -> None:
    await store.ensure_session(session("s1"))
    sent = Message(
        "m1", "assistant", "héllo ✓ 🚀", at(3), status="error", stream_id="st1",
        client_message_id="c1", provider="openai", model="gpt", error_code="upstream",
    )  # fmt: skip
    await store.add_message("s1", sent)
    assert await store.get_messages("s1") == [sent]


async def test_claim_client_message_first_wins_and_later_claims_get_its_ack(store: Store) -> None:
    assert await store.claim_client_message("s1", "c1", {"stream_id": "a"}) is None
    assert await store.claim_client_message("s1", "c1", {"stream_id": "b"}) == {"stream_id": "a"}
    assert await store.claim_client_message("s2", "c1", {"stream_id": "c"}) is None
    assert await store.find_client_message("s1", "c1") == {"stream_id": "a"}
    assert await store.find_client_message("s1", "c2") is None

    await store.release_client_message("s1", "c1")
    assert await store.find_client_message("s1", "c1") is None
    assert await store.claim_client_message("s1", "c1", {"stream_id": "d"}) is None


async def test_max_sessions_evicts_the_oldest_sessions(make_store: StoreFactory) -> None:
    store = await make_store(max_sessions=2)
    for n in range(3):
        await store.ensure_session(session(f"s{n}", t=n))
        await store.add_message(f"s{n}", message(n, t=n))
    assert [s.session_id for s in await store.list_sessions()] == ["s2", "s1"]
    assert await store.get_session("s0") is None
    assert await store.get_messages("s0") == []


# -- streams --------------------------------------------------------------


async def test_claim_end_is_won_once_per_stream(store: Store) -> None:
    assert await store.claim_end("a", "worker-a") is True
    assert await store.claim_end("a", "lost-1") is False
    assert await store.claim_end("a", "worker-a") is True  # a retry by the claimant
    assert await store.claim_end("b", "lost-1") is True


async def test_create_stream_holds_one_slot_per_stream_up_to_the_cap(store: Store) -> None:
    assert await store.create_stream(stream("a"), max_per_session=1) is True
    assert await store.create_stream(stream("a"), max_per_session=1) is True  # same stream
    assert await store.create_stream(stream("b"), max_per_session=1) is False
    assert await store.get_stream("b") is None
    assert await store.create_stream(stream("c", session_id="s2"), max_per_session=1) is True

    assert await store.finish_stream(stream("a"), terminal()) is True
    assert await store.create_stream(stream("b"), max_per_session=1) is True


async def test_create_stream_allows_several_when_the_cap_is_higher(store: Store) -> None:
    assert await store.create_stream(stream("a"), max_per_session=2) is True
    assert await store.create_stream(stream("b"), max_per_session=2) is True
    assert await store.create_stream(stream("c"), max_per_session=2) is False


async def test_get_stream_reports_its_status_and_last_seq_from_the_log(store: Store) -> None:
    assert await store.get_stream("a") is None
    record = stream("a")
    await store.create_stream(record, max_per_session=1)
    found = await store.get_stream("a")
    assert found == record
    assert (found.status, found.last_seq) == ("streaming", 0)

    for seq in (1, 2, 3):
        await store.append_token("a", seq, {"seq": seq})
    found = await store.get_stream("a")
    assert found is not None
    assert (found.status, found.last_seq) == ("streaming", 3)

    await store.finish_stream(record, terminal("stopped"))
    found = await store.get_stream("a")
    assert found is not None
    assert (found.status, found.last_seq) == ("stopped", 3)


async def test_active_streams_are_oldest_first_and_exclude_ended_ones(store: Store) -> None:
    await store.create_stream(stream("late", "s1", t=30), max_per_session=5)
    await store.create_stream(stream("early", "s1", t=10), max_per_session=5)
    await store.create_stream(stream("other", "s2", t=20), max_per_session=5)
    await store.create_stream(stream("ended", "s1", t=5), max_per_session=5)
    await store.finish_stream(stream("ended", "s1", t=5), terminal("error"))

    assert [r.stream_id for r in await store.active_streams("s1")] == ["early", "late"]
    assert [r.stream_id for r in await store.active_streams("s2")] == ["other"]
    assert await store.active_streams("s3") == []
    assert [r.stream_id for r in await store.active_streams()] == ["early", "other", "late"]


async def test_read_tokens_returns_exactly_the_entries_after_seq_in_order(store: Store) -> None:
    payloads = {seq: {"stream_id": "a", "seq": seq, "text": f"tok{seq} ✓"} for seq in range(1, 6)}
    for seq, payload in payloads.items():
        await store.append_token("a", seq, payload)
    assert await store.read_tokens("a", 0) == [LogEntry(s, p) for s, p in payloads.items()]
    assert [e.seq for e in await store.read_tokens("a", 2)] == [3, 4, 5]
    assert await store.read_tokens("a", 5) == []
    assert await store.read_tokens("a", 99) == []
    assert await store.read_tokens("unknown", 0) == []


async def test_append_token_ignores_a_seq_at_or_below_the_last(store: Store) -> None:
    """A write retried after a lost reply must not duplicate or reorder the log."""
    await store.append_token("a", 1, {"text": "one"})
    await store.append_token("a", 2, {"text": "two"})
    await store.append_token("a", 2, {"text": "two again"})
    await store.append_token("a", 1, {"text": "one again"})
    await store.append_token("a", 3, {"text": "three"})
    assert [e.payload["text"] for e in await store.read_tokens("a", 0)] == ["one", "two", "three"]


async def test_token_log_keeps_the_newest_max_log_entries(make_store: StoreFactory) -> None:
    store = await make_store(max_log_entries=5)
    await store.create_stream(stream("a"), max_per_session=1)
    for seq in range(1, 13):
        await store.append_token("a", seq, {"seq": seq})
    assert [e.seq for e in await store.read_tokens("a", 0)] == [8, 9, 10, 11, 12]
    assert [e.seq for e in await store.read_tokens("a", 10)] == [11, 12]
    found = await store.get_stream("a")
    assert found is not None
    assert found.last_seq == 12


async def test_finish_stream_first_caller_wins_and_its_terminal_is_kept(store: Store) -> None:
    record = stream("a")
    await store.create_stream(record, max_per_session=1)
    assert await store.get_terminal("a") is None
    first = Terminal("stopped", "chat_done", {"stream_id": "a", "stopped": True, "seq": 4})
    assert await store.finish_stream(record, first) is True
    assert await store.finish_stream(record, terminal("error")) is False
    assert await store.get_terminal("a") == first
    assert await store.active_streams("s1") == []
    assert await store.active_streams() == []


async def test_request_stop_flags_only_that_stream(store: Store) -> None:
    assert await store.stop_requested("a") is False
    await store.request_stop("a")
    assert await store.stop_requested("a") is True
    assert await store.stop_requested("b") is False


async def test_wait_tokens_returns_new_entries_and_times_out_empty(store: Store) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await store.wait_tokens("a", 0, 200) == []
    assert loop.time() - started >= 0.15

    await store.append_token("a", 1, {"seq": 1})
    await store.append_token("a", 2, {"seq": 2})
    assert await store.wait_tokens("a", 0, 5000) == [
        LogEntry(1, {"seq": 1}),
        LogEntry(2, {"seq": 2}),
    ]
    assert await store.wait_tokens("a", 2, 0) == []

    waiting = asyncio.create_task(store.wait_tokens("a", 2, 10_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await store.append_token("a", 3, {"seq": 3})
    assert await asyncio.wait_for(waiting, 5) == [LogEntry(3, {"seq": 3})]


async def test_lease_is_alive_only_while_refreshed(store: Store) -> None:
    assert await store.lease_alive("a") is False
    await store.refresh_lease("a", "worker-a", 0.2)  # rounded up to the 1 s TTL floor
    assert await store.lease_alive("a") is True
    assert await store.lease_alive("b") is False


async def test_publish_reaches_nobody_in_memory_and_the_shared_store_says_so(
    store: Store,
) -> None:
    assert await store.publish("stop", b"x") == 0
    assert store.shared is isinstance(store, RedisStore)


async def test_data_expires_after_its_ttl(make_store: StoreFactory) -> None:
    store = await make_store(session_ttl=1, log_ttl=1)
    await store.ensure_session(session("s1"))
    await store.add_message("s1", message(1, t=1))
    await store.claim_client_message("s1", "c1", {"ok": True})
    await store.create_stream(stream("a"), max_per_session=1)
    await store.append_token("a", 1, {"seq": 1})
    await store.request_stop("a")
    await store.finish_stream(stream("a"), terminal())
    await store.create_stream(stream("b"), max_per_session=1)
    await store.refresh_lease("b", "worker-a", 1)

    await asyncio.sleep(1.6)
    assert await store.get_session("s1") is None
    assert await store.list_sessions() == []
    assert await store.get_messages("s1") == []
    assert await store.find_client_message("s1", "c1") is None
    assert await store.get_stream("a") is None
    assert await store.get_terminal("a") is None
    assert await store.read_tokens("a", 0) == []
    assert await store.stop_requested("a") is False
    assert await store.active_streams() == []
    assert await store.lease_alive("b") is False
    # The expired stream "b" no longer holds the session's only slot.
    assert await store.create_stream(stream("c"), max_per_session=1) is True


async def test_session_ttl_zero_keeps_sessions(make_store: StoreFactory) -> None:
    store = await make_store(session_ttl=0, log_ttl=1)
    await store.ensure_session(session("s1"))
    await store.add_message("s1", message(1, t=1))
    await store.claim_client_message("s1", "c1", {"stream_id": "a"})
    await asyncio.sleep(1.3)
    assert await store.get_session("s1") is not None
    assert len(await store.get_messages("s1")) == 1
    assert await store.find_client_message("s1", "c1") == {"stream_id": "a"}


async def test_ping_succeeds_when_the_store_is_up(store: Store) -> None:
    await store.ping()


# -- Redis only -----------------------------------------------------------


def test_mask_url_hides_passwords_and_keeps_the_rest() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("redis://bob:s3cr%40t@h:1/2") == "redis://bob:***@h:1/2"
    assert mask_url("redis://:s3cret@h:1/0") == "redis://***@h:1/0"
    assert mask_url("rediss://s3cret@h:1") == "rediss://***@h:1"
    assert mask_url("redis://h:1/0?password=s3cret&db=2") == "redis://h:1/0?password=%2A%2A%2A&db=2"


@pytest.mark.redis
async def test_unreachable_redis_raises_store_unavailable_without_the_password() -> None:
    port = free_port()
    store = RedisStore(f"redis://bob:s3cret@127.0.0.1:{port}/0", log_ttl=60)
    try:
        with pytest.raises(StoreUnavailable) as opened:
            await store.open()
        with pytest.raises(StoreUnavailable) as called:
            await store.get_session("s1")
        with pytest.raises(StoreUnavailable):
            await store.wait_tokens("a", 0, 100)
    finally:
        await store.close()
    for raised in (opened.value, called.value):
        text = str(raised)
        assert f"redis://bob:***@127.0.0.1:{port}/0" in text
        assert "start redis-server or unset REDIS_URL" in text
        assert "s3cret" not in text


@pytest.mark.redis
async def test_wrong_password_is_reported_as_a_login_problem(
    private_redis_server: RedisServer,  # noqa: F811
) -> None:
    assert private_redis_server.command("CONFIG", "SET", "requirepass", "right") == b"+OK"
    store = RedisStore(f"redis://:wr0ng@127.0.0.1:{private_redis_server.port}/0")
    try:
        with pytest.raises(StoreUnavailable, match="REDIS_URL") as raised:
            await store.open()
    finally:
        await store.close()
    assert "wr0ng" not in str(raised.value)


@pytest.mark.redis
async def test_keys_are_namespaced_by_the_prefix(redis_server: RedisServer, redis_url: str) -> None:  # noqa: F811
    one = RedisStore(redis_url, prefix="one")
    two = RedisStore(redis_url, prefix="two")
    try:
        await one.ensure_session(session("s1"))
        await one.create_stream(stream("a"), max_per_session=1)
        await one.append_token("a", 1, {"seq": 1})
        assert await two.get_session("s1") is None
        assert await two.read_tokens("a", 0) == []
        assert await two.active_streams() == []
        assert redis_server.command("EVAL", "return #redis.call('KEYS', 'one:*')", "0") == b":6"
        assert redis_server.command("DBSIZE") == b":6"
    finally:
        await one.close()
        await two.close()


@pytest.mark.redis
async def test_client_recovers_by_itself_after_redis_restarts(
    private_redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisStore(private_redis_server.url)
    try:
        await store.open()
        await store.ensure_session(session("s1"))
        private_redis_server.stop(kill=True)
        with pytest.raises(StoreUnavailable):
            await store.get_session("s1")
        private_redis_server.start()
        # Same store object, no reopen: the pool reconnects (the data is gone: no persistence).
        assert await store.get_session("s1") is None
        await store.ensure_session(session("s2"))
        assert await store.get_session("s2") is not None
        await store.ping()
    finally:
        await store.close()


@pytest.mark.redis
async def test_blocked_wait_tokens_does_not_starve_other_commands(redis_url: str) -> None:  # noqa: F811
    store = RedisStore(redis_url, max_log_entries=100)
    try:
        waiters = [asyncio.create_task(store.wait_tokens(f"s{n}", 0, 10_000)) for n in range(20)]
        await asyncio.sleep(0.1)
        for n in range(20):
            await store.append_token(f"s{n}", 1, {"n": n})
        results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert results == [[LogEntry(1, {"n": n})] for n in range(20)]
    finally:
        await store.close()


@pytest.mark.redis
async def test_subscribe_receives_messages_published_under_its_prefix(redis_url: str) -> None:  # noqa: F811
    store = RedisStore(redis_url, prefix="one")
    other = RedisStore(redis_url, prefix="two")
    try:
        async with store.subscribe("stop", "ping") as messages:
            assert await other.publish("stop", b"elsewhere") == 0
            assert await store.publish("stop", b"stream-1") == 1
            assert await store.publish("ping", b"\x00\xff") == 1
            received = [await asyncio.wait_for(anext(messages), 5) for _ in range(2)]
        assert received == [("stop", b"stream-1"), ("ping", b"\x00\xff")]
        assert await store.publish("stop", b"after exit") == 0
    finally:
        await store.close()
        await other.close()


@pytest.mark.redis
async def test_subscription_resubscribes_by_itself_after_redis_restarts(
    private_redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.store.redis")
    store = RedisStore(private_redis_server.url)
    try:
        async with store.subscribe("stop") as messages:
            receiving = asyncio.create_task(anext(messages))
            await asyncio.sleep(0.1)
            private_redis_server.stop(kill=True)
            await asyncio.sleep(0.5)
            private_redis_server.start()

            async def publish_until_heard() -> None:
                while True:
                    try:
                        if await store.publish("stop", b"stream-1") >= 1:
                            return
                    except StoreUnavailable:
                        pass
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(publish_until_heard(), 15)
            assert await asyncio.wait_for(receiving, 5) == ("stop", b"stream-1")
    finally:
        await store.close()
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert any(level == logging.WARNING and "lost" in text for level, text in levels)
    assert any(level == logging.INFO and "restored" in text for level, text in levels)
