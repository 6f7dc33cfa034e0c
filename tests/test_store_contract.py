"""The store contract, run against every backend (memory and a real redis-server).

Then the Redis backend's own promises: errors that say what to do without
leaking the password, recovery after a Redis restart, blocking reads for
cross-worker tailing, and pub/sub that re-subscribes by itself.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from chatsock.store import Registration, StoreRequestError
from chatsock.store.base import MAX_SEQ, Store, StoreUnavailable
from chatsock.store.memory import MemoryStore
from chatsock.store.models import (
    Appended,
    LogEntry,
    Message,
    SessionInfo,
    StreamRecord,
    Terminal,
    TokenAppend,
)
from chatsock.store.redis import RedisStore, mask_url
from tests.fakes.store import FlakyStore
from tests.support.fixtures import private_redis_server, redis_server, redis_url  # noqa: F401
from tests.support.redis_server import RedisServer, free_port
from tests.support.redis_topology import TOPOLOGIES, Topologies, Topology, redis_topologies  # noqa: F401

StoreFactory = Callable[..., Awaitable[Store]]

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> str:
    """An ISO timestamp `seconds` after a fixed origin, so tests control ordering."""
    return (_EPOCH + timedelta(seconds=seconds)).isoformat()


def session(session_id: str, t: float = 0) -> SessionInfo:
    return SessionInfo(session_id, created_at=at(t), updated_at=at(t))


def message(n: int, content: str = "", role: str = "user", t: float = 0) -> Message:
    return Message(f"msg-{n}", role, content or f"message {n}", at(t))  # type: ignore[arg-type]


def stream(
    stream_id: str, session_id: str = "s1", t: float = 0, cmid: str | None = None
) -> StreamRecord:
    return StreamRecord(
        stream_id, session_id, f"msg-{stream_id}", "worker-a", "fake", "m", started_at=at(t),
        client_message_id=cmid,
    )  # fmt: skip


def ack(stream_id: str, session_id: str = "s1") -> dict[str, Any]:
    return {"stream_id": stream_id, "session_id": session_id, "message_id": f"msg-{stream_id}"}


async def register(
    store: Store, record: StreamRecord, limit: int = 1, lease_s: float = 10
) -> Registration:
    return await store.register_stream(
        record, limit=limit, lease_s=lease_s, ack=ack(record.stream_id, record.session_id)
    )


# The deployment each store of a topology test runs on (TLS, Sentinel, Cluster).
_TOPOLOGY_OF: weakref.WeakKeyDictionary[Store, Topology] = weakref.WeakKeyDictionary()


async def stored_keys(store: Store) -> set[str]:
    """Every key the store holds now (each Redis test has a database of its own)."""
    if isinstance(store, MemoryStore):
        return set(store.live_keys())
    if store in _TOPOLOGY_OF:
        return await asyncio.to_thread(_TOPOLOGY_OF[store].keys)
    assert isinstance(store, RedisStore)
    client = aioredis.Redis.from_url(store.url)  # test servers have no password to mask
    try:
        return {bytes(key).decode() for key in await client.keys("*")}
    finally:
        await client.aclose()


async def redis_pings(store: Store) -> int:
    """How many PINGs the Redis server has answered (0 for other stores)."""
    if not isinstance(store, RedisStore):
        return 0
    if store in _TOPOLOGY_OF:
        return await asyncio.to_thread(_TOPOLOGY_OF[store].pings)
    client = aioredis.Redis.from_url(store.url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


def terminal(status: str = "complete") -> Terminal:
    return Terminal(status, "chat_done", {"stream_id": "x", "status": status})  # type: ignore[arg-type]


@pytest.fixture(
    params=[
        "memory",
        *(pytest.param(name, marks=pytest.mark.redis) for name in ("redis", *TOPOLOGIES)),
    ]
)
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Build stores of one backend with any Store options; all closed after the test.
    Redis runs as one server, and as TLS with a password, Sentinel and Cluster."""
    topology: Topology | None = None
    where: dict[str, Any] = {}
    if request.param == "redis":
        where = {"url": request.getfixturevalue("redis_url")}
    elif request.param != "memory":
        topologies: Topologies = request.getfixturevalue("redis_topologies")
        topology = await asyncio.to_thread(topologies.get, request.param)
        where = topology.store_options()
    stores: list[Store] = []

    async def make(*, mixin: type | None = None, **options: Any) -> Store:
        """`mixin`: a test subclass (a fake backend, e.g. one that pauses) over this backend."""
        base: type[Store] = RedisStore if where else MemoryStore
        kind = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {}) if mixin else base
        store: Store = kind(**where, **options)
        if topology is not None:
            _TOPOLOGY_OF[store] = topology
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
    await register(store, stream("a", cmid="c1"))
    await register(store, stream("b", "s2", cmid="c1"))
    assert await store.delete_session("s1") is True
    assert await store.delete_session("s1") is False
    assert await store.get_session("s1") is None
    assert await store.get_messages("s1") == []
    assert await store.find_client_message("s1", "c1") is None
    assert await store.find_client_message("s2", "c1") == ack("b", "s2")
    assert [s.session_id for s in await store.list_sessions()] == ["s2"]


async def test_delete_session_leaves_no_key_of_the_session_or_its_streams(store: Store) -> None:
    """Defect 12: records, logs, ends, flags and leases of its streams went too."""
    await store.ensure_session(session("s1"))
    await store.ensure_session(session("s2", t=1))
    await store.add_message("s1", message(1, t=2))
    await register(store, stream("ended", cmid="c1"), limit=2)
    for seq in (1, 2):
        await store.append_token("ended", seq, {"seq": seq, "token": "x"})
    await store.request_stop("ended")
    assert await store.claim_end("ended", "worker-a") is True
    await store.finish_stream(stream("ended"), terminal("stopped"))
    await register(store, stream("running", cmid="c2"), limit=2)
    await store.append_token("running", 1, {"seq": 1})
    await store.mark_present("s1", "worker-a", 30)
    await register(store, stream("kept", "s2", cmid="c1"))
    await store.append_token("kept", 1, {"seq": 1})
    before = await stored_keys(store)

    assert await store.delete_session("s1") is True

    for stream_id in ("ended", "running"):
        assert await store.get_stream(stream_id) is None
        assert await store.read_tokens(stream_id, 0) == []
        assert await store.get_terminal(stream_id) is None
        assert await store.stop_requested(stream_id) is False
        assert await store.lease_alive(stream_id) is False
    assert [r.stream_id for r in await store.active_streams()] == ["kept"]
    assert await store.present_elsewhere("s1", "worker-b") is False
    left = await stored_keys(store)
    assert [k for k in left if any(n in k for n in (":s1", "ended", "running"))] == []
    assert {k for k in before if ":s2" in k or "kept" in k} <= left


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


async def test_a_message_for_a_deleted_session_recreates_nothing(store: Store) -> None:
    """A reply that ends after its session was deleted (or evicted) stores nothing:
    whoever creates that id next must not inherit it."""
    await store.ensure_session(session("s1"))
    await store.delete_session("s1")
    assert await store.add_message("s1", message(1, "late", role="assistant", t=1)) is False
    assert await store.get_messages("s1") == []
    assert await store.count_messages("s1") == 0


async def test_a_message_push_writes_nothing_once_its_header_is_gone_or_changed(
    store: Store,
) -> None:
    """The one atomic step of add_message: guarded by the header it read, so a
    delete (or a session made again) landing after the read is never undone."""
    await store.ensure_session(session("s1"))
    seen = await store._get(store._sk("s1"))
    assert seen is not None
    push = store._message_push(
        "s1", message(1, t=1), seen, SessionInfo.from_dict(orjson.loads(seen))
    )
    changed = replace(push, seen=b'{"other": 1}')
    before = await stored_keys(store)
    assert await store._push_once(changed) == -2
    assert await stored_keys(store) == before
    assert await store.get_messages("s1") == []
    await store.delete_session("s1")
    assert await store._push_once(push) == -1
    assert [k for k in await stored_keys(store) if ":s1" in k] == []
    assert await store.list_sessions() == []


async def test_add_message_after_a_delete_returns_false_and_logs_it(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.ensure_session(session("s1"))
    await store.delete_session("s1")
    with caplog.at_level(logging.INFO, logger="chatsock.store.base"):
        assert await store.add_message("s1", message(1, "late", role="assistant")) is False
    assert "session 's1' is gone: message 'msg-1'" in caplog.text


async def test_add_message_twice_stores_it_once(store: Store) -> None:
    """Defect 6: a retried add_message (lost reply, redis-py's own retry) must not
    store the reply twice."""
    await store.ensure_session(session("s1"))
    reply = message(1, "the reply", role="assistant", t=1)
    assert await store.add_message("s1", reply) is True
    assert await store.add_message("s1", reply) is False
    await store.add_message("s1", message(2, t=2))
    assert await store.add_message("s1", reply) is False
    assert [m.message_id for m in await store.get_messages("s1")] == ["msg-1", "msg-2"]


async def test_concurrent_adds_of_one_message_store_it_once(store: Store) -> None:
    await store.ensure_session(session("s1"))
    reply = message(1, "the reply", role="assistant", t=1)
    stored = await asyncio.gather(*(store.add_message("s1", reply) for _ in range(20)))
    assert sorted(stored) == [False] * 19 + [True]
    assert await store.count_messages("s1") == 1


async def test_message_ids_are_remembered_as_long_as_their_messages(
    make_store: StoreFactory,
) -> None:
    store = await make_store(max_messages=3)
    await store.ensure_session(session("s1"))
    for n in range(1, 6):
        await store.add_message("s1", message(n, t=n))
    assert await store.add_message("s1", message(5, t=5)) is False  # still stored
    assert await store.add_message("s1", message(1, t=6)) is True  # trimmed long ago
    assert [m.message_id for m in await store.get_messages("s1")] == ["msg-4", "msg-5", "msg-1"]


async def test_an_add_message_retried_after_its_reply_was_lost_stores_once() -> None:
    store = FlakyStore()
    await store.ensure_session(session("s1"))
    reply = message(1, "the reply", role="assistant", t=1)
    store.lose_assistant_replies = True
    with pytest.raises(StoreUnavailable):
        await store.add_message("s1", reply)
    store.lose_assistant_replies = False
    assert await store.add_message("s1", reply) is False
    assert await store.get_messages("s1") == [reply]


async def test_max_sessions_evicts_the_oldest_sessions(make_store: StoreFactory) -> None:
    store = await make_store(max_sessions=2)
    for n in range(3):
        await store.ensure_session(session(f"s{n}", t=n))
        await store.add_message(f"s{n}", message(n, t=n))
    assert [s.session_id for s in await store.list_sessions()] == ["s2", "s1"]
    assert await store.get_session("s0") is None
    assert await store.get_messages("s0") == []


async def test_max_sessions_evicts_within_an_owner_never_another_owners(
    make_store: StoreFactory,
) -> None:
    store = await make_store(max_sessions=2)
    await store.ensure_session(SessionInfo("alice-1", at(0), at(0), owner="alice"))
    for n in range(10):  # bob creates many sessions after alice's
        await store.ensure_session(SessionInfo(f"bob-{n}", at(n + 1), at(n + 1), owner="bob"))
    assert await store.get_session("alice-1") is not None
    assert [s.session_id for s in await store.list_sessions(owner="bob")] == ["bob-9", "bob-8"]
    assert [s.session_id for s in await store.list_sessions(owner="alice")] == ["alice-1"]
    assert {s.session_id for s in await store.list_sessions()} == {"alice-1", "bob-9", "bob-8"}


async def test_deleting_a_session_removes_it_from_its_owners_list(store: Store) -> None:
    await store.ensure_session(SessionInfo("a1", at(0), at(0), owner="alice"))
    await store.ensure_session(SessionInfo("a2", at(1), at(1), owner="alice"))
    await store.delete_session("a1")
    assert [s.session_id for s in await store.list_sessions(owner="alice")] == ["a2"]


# -- registration ---------------------------------------------------------


def user_stream(stream_id: str, session_id: str, user: str) -> StreamRecord:
    record = stream(stream_id, session_id)
    record.user = user
    return record


async def test_register_stream_holds_a_users_slots_across_sessions(store: Store) -> None:
    async def reg(record: StreamRecord) -> Registration:
        return await store.register_stream(
            record, limit=1, lease_s=10, ack=ack(record.stream_id, record.session_id),
            user_limit=2,
        )  # fmt: skip

    assert await reg(user_stream("a", "s1", "alice")) == Registration(True)
    assert await reg(user_stream("b", "s2", "alice")) == Registration(True)
    assert await reg(user_stream("c", "s3", "alice")) == Registration(False, full="user")
    assert await reg(user_stream("d", "s4", "bob")) == Registration(True)  # bob's own slots
    assert [r.stream_id for r in await store.active_streams(user="alice")] == ["a", "b"]
    record = user_stream("a", "s1", "alice")
    await store.finish_stream(record, Terminal("complete", "chat_complete", {}))
    assert await reg(user_stream("c", "s3", "alice")) == Registration(True)
    assert [r.stream_id for r in await store.active_streams(user="alice")] == ["b", "c"]
    await store.delete_session("s3")
    assert [r.stream_id for r in await store.active_streams(user="alice")] == ["b"]


async def test_register_stream_holds_one_slot_per_stream_up_to_the_limit(store: Store) -> None:
    assert await register(store, stream("a")) == Registration(True)
    assert await register(store, stream("b")) == Registration(False, full="session")
    assert await store.get_stream("b") is None
    assert await register(store, stream("c", session_id="s2")) == Registration(True)

    assert await store.finish_stream(stream("a"), terminal()) is True
    assert await register(store, stream("b")) == Registration(True)


async def test_register_stream_allows_several_when_the_limit_is_higher(store: Store) -> None:
    assert (await register(store, stream("a"), limit=2)).accepted
    assert (await register(store, stream("b"), limit=2)).accepted
    assert not (await register(store, stream("c"), limit=2)).accepted


async def test_register_stream_writes_slot_record_lease_index_and_ack_together(
    store: Store,
) -> None:
    record = stream("a", cmid="c1")
    assert await store.lease_alive("a") is False
    assert await register(store, record) == Registration(True)
    assert await store.get_stream("a") == record
    assert await store.lease_alive("a") is True
    assert await store.active_streams("s1") == [record]
    assert await store.active_streams() == [record]
    assert await store.find_client_message("s1", "c1") == ack("a")


async def test_a_refused_registration_writes_nothing(store: Store) -> None:
    await register(store, stream("a", cmid="c1"))
    full = await register(store, stream("b", cmid="c2"))
    repeated = await register(store, stream("c", cmid="c1"), limit=5)
    assert full == Registration(False, full="session")
    assert repeated == Registration(False, ack("a"))
    for stream_id in ("b", "c"):
        assert await store.get_stream(stream_id) is None
        assert await store.lease_alive(stream_id) is False
    assert await store.find_client_message("s1", "c2") is None
    assert [r.stream_id for r in await store.active_streams("s1")] == ["a"]
    assert [r.stream_id for r in await store.active_streams()] == ["a"]


async def test_a_registration_retried_after_a_lost_reply_is_accepted_once(store: Store) -> None:
    record = stream("a", cmid="c1")
    assert await register(store, record) == Registration(True)
    assert await register(store, record) == Registration(True)
    no_cmid = stream("b", "s2")
    assert await register(store, no_cmid) == Registration(True)
    assert await register(store, no_cmid) == Registration(True)
    assert await store.active_streams("s1") == [record]
    assert await store.find_client_message("s1", "c1") == ack("a")


async def test_a_repeated_client_message_id_gets_the_first_ack_not_too_many_streams(
    store: Store,
) -> None:
    """Defect 17: the id is claimed with the slot, so a retry while the first
    request runs is answered with the first ack, even when the slot is taken."""
    await register(store, stream("a", cmid="c1"))
    assert await register(store, stream("b", cmid="c1")) == Registration(False, ack("a"))
    assert await register(store, stream("c", "s2", cmid="c1")) == Registration(True)


@pytest.mark.parametrize("limit", [1, 20])
async def test_concurrent_registrations_with_one_client_message_id_accept_exactly_one(
    store: Store, limit: int
) -> None:
    """Every other one gets the first one's ack (never too_many_streams: defect 17)."""
    records = [stream(f"st{n}", cmid="c1") for n in range(20)]
    results = await asyncio.gather(*(register(store, r, limit=limit) for r in records))
    accepted = [r.stream_id for r, result in zip(records, results, strict=True) if result.accepted]
    assert len(accepted) == 1
    assert all(res.earlier == ack(accepted[0]) for res in results if not res.accepted)
    assert [r.stream_id for r in await store.active_streams("s1")] == accepted


async def test_concurrent_registrations_over_the_limit_accept_exactly_the_limit(
    store: Store,
) -> None:
    records = [stream(f"st{n:02}") for n in range(20)]
    results = await asyncio.gather(*(register(store, r, limit=3) for r in records))
    accepted = sorted(r.stream_id for r, res in zip(records, results, strict=True) if res.accepted)
    assert len(accepted) == 3
    assert all(res.earlier is None for res in results)
    assert sorted(r.stream_id for r in await store.active_streams("s1")) == accepted


async def test_release_client_message_with_a_stream_id_releases_only_its_own(
    store: Store,
) -> None:
    await register(store, stream("a", cmid="c1"), limit=5)
    assert await store.release_client_message("s1", "c1", "other") is False
    assert await store.find_client_message("s1", "c1") == ack("a")
    assert await store.release_client_message("s1", "c1", "a") is True
    assert await store.find_client_message("s1", "c1") is None
    assert await store.release_client_message("s1", "c1", "a") is False

    assert (await register(store, stream("b", cmid="c1"), limit=5)).accepted
    assert await store.release_client_message("s1", "c1") is True
    assert await store.find_client_message("s1", "c1") is None


async def test_a_session_remembers_its_newest_max_messages_client_message_ids(
    make_store: StoreFactory,
) -> None:
    """Defect 20: the per-session acks were never trimmed."""
    store = await make_store(max_messages=3)
    for n in range(6):
        assert (await register(store, stream(f"st{n}", cmid=f"c{n}"), limit=10)).accepted
    found = [await store.find_client_message("s1", f"c{n}") for n in range(6)]
    assert found == [None, None, None, ack("st3"), ack("st4"), ack("st5")]
    # A released id leaves room for one more without dropping the others.
    assert await store.release_client_message("s1", "c3") is True
    await register(store, stream("st6", cmid="c6"), limit=10)
    assert await store.find_client_message("s1", "c4") == ack("st4")


# -- streams --------------------------------------------------------------


async def test_claim_end_is_won_once_per_stream(store: Store) -> None:
    assert await store.claim_end("a", "worker-a") is True
    assert await store.claim_end("a", "lost-1") is False
    assert await store.claim_end("a", "worker-a") is True  # a retry by the claimant
    assert await store.claim_end("b", "lost-1") is True


async def test_get_stream_reports_its_status_and_last_seq_from_the_log(store: Store) -> None:
    assert await store.get_stream("a") is None
    record = stream("a")
    await register(store, record)
    found = await store.get_stream("a")
    assert found == record
    assert (found.status, found.last_seq) == ("streaming", 0)

    for seq in (1, 2, 3):
        await store.append_token("a", seq, {"seq": seq})
    found = await store.get_stream("a")
    assert found is not None
    assert (found.status, found.last_seq) == ("streaming", 3)
    assert [r.last_seq for r in await store.active_streams("s1")] == [3]

    await store.finish_stream(record, terminal("stopped"))
    found = await store.get_stream("a")
    assert found is not None
    assert (found.status, found.last_seq) == ("stopped", 3)


async def test_a_reasoning_stream_reports_each_kinds_last_seq(store: Store) -> None:
    # Reasoning first, then text interleaved with more reasoning: each kind's seqs
    # from 1, at consecutive log positions (what a reply that reasons logs).
    record = stream("r")
    await register(store, record)
    entries = [("reasoning", 1), ("reasoning", 2), ("token", 1), ("reasoning", 3), ("token", 2)]
    expected = [(1, 0, 1), (2, 0, 2), (3, 1, 2), (4, 1, 3), (5, 2, 3)]
    for position, ((kind, seq), seqs) in enumerate(zip(entries, expected, strict=True), 1):
        await store.append_token("r", position, {"seq": seq, kind: "x"})
        found = await store.get_stream("r")
        assert found is not None
        assert (found.last_seq, found.text_seq, found.reasoning_seq) == seqs
        [listed] = await store.active_streams("s1")
        assert (listed.last_seq, listed.text_seq, listed.reasoning_seq) == seqs


async def test_active_streams_are_oldest_first_and_exclude_ended_ones(store: Store) -> None:
    await register(store, stream("late", "s1", t=30), limit=5)
    await register(store, stream("early", "s1", t=10), limit=5)
    await register(store, stream("other", "s2", t=20), limit=5)
    await register(store, stream("ended", "s1", t=5), limit=5)
    await store.finish_stream(stream("ended", "s1", t=5), terminal("error"))

    assert [r.stream_id for r in await store.active_streams("s1")] == ["early", "late"]
    assert [r.stream_id for r in await store.active_streams("s2")] == ["other"]
    assert await store.active_streams("s3") == []
    assert [r.stream_id for r in await store.active_streams()] == ["early", "other", "late"]


async def test_active_streams_frees_a_slot_whose_record_is_gone(make_store: StoreFactory) -> None:
    """Defects 4 and 20: a slot member whose record expired held the slot."""
    store = await make_store(log_ttl=3)
    await register(store, stream("gone"), limit=2)
    await asyncio.sleep(1.5)
    await register(store, stream("running"), limit=2)  # renews the slot set's TTL
    await asyncio.sleep(2.0)  # "gone" expired; the slot set has not
    assert await register(store, stream("new"), limit=2) == Registration(False, full="session")
    assert [r.stream_id for r in await store.active_streams("s1")] == ["running"]
    assert await register(store, stream("new"), limit=2) == Registration(True)


async def test_active_streams_of_every_session_drops_index_entries_of_gone_streams(
    make_store: StoreFactory,
) -> None:
    store = await make_store(log_ttl=1)
    await register(store, stream("gone"))
    await asyncio.sleep(1.3)
    assert await store.active_streams() == []
    assert [k for k in await stored_keys(store) if k.endswith(":streams:active")] == []


async def test_lapsed_streams_are_the_running_streams_whose_lease_lapsed(
    make_store: StoreFactory,
) -> None:
    store = await make_store(log_ttl=60)
    lapsing, alive = stream("lapsing", "s1", t=1), stream("alive", "s2", t=2)
    await register(store, lapsing, lease_s=1)
    await register(store, alive, lease_s=30)
    await register(store, stream("ended", "s3", t=0), lease_s=1)
    await store.finish_stream(stream("ended", "s3"), terminal())
    await store.append_token("lapsing", 1, {"seq": 1})
    assert await store.lapsed_streams() == []

    await asyncio.sleep(1.5)
    lapsing.last_seq = lapsing.text_seq = 1
    assert await store.lapsed_streams() == [lapsing]
    assert await store.lapsed_streams(limit=1) == [lapsing]  # the oldest entries first
    await store.refresh_lease("lapsing", "worker-b", 10)
    assert await store.lapsed_streams() == []


async def test_lapsed_streams_drops_index_entries_of_gone_streams(
    make_store: StoreFactory,
) -> None:
    store = await make_store(log_ttl=1)
    await register(store, stream("gone"), lease_s=1)
    await asyncio.sleep(1.3)
    assert await store.lapsed_streams() == []
    assert [k for k in await stored_keys(store) if k.endswith(":streams:active")] == []


async def test_keep_streams_alive_keeps_a_stream_running_past_log_ttl(
    make_store: StoreFactory,
) -> None:
    """Defect 10: a stream longer than log_ttl lost its record and slot."""
    store = await make_store(log_ttl=2, session_ttl=2)
    kept, unkept = stream("kept", cmid="c1"), stream("unkept", "s2")
    await register(store, kept)
    await register(store, unkept)
    await store.append_token("kept", 1, {"seq": 1})
    for _ in range(7):
        assert await store.keep_streams_alive([kept], "worker-a", 3) == set()
        await asyncio.sleep(0.5)
    assert await store.get_stream("unkept") is None
    found = await store.get_stream("kept")
    assert found is not None
    assert (found.status, found.last_seq) == ("streaming", 1)
    assert await store.read_tokens("kept", 0) == [LogEntry(1, {"seq": 1})]
    assert await store.lease_alive("kept") is True
    assert [r.stream_id for r in await store.active_streams("s1")] == ["kept"]
    assert await register(store, stream("second")) == Registration(False, full="session")
    assert await store.find_client_message("s1", "c1") == ack("kept")
    # Its session's stream list was kept too, so deleting the session finds it.
    await store.delete_session("s1")
    assert await store.get_stream("kept") is None


async def test_keep_streams_alive_renews_leases_and_reports_stop_flags(store: Store) -> None:
    a, b, c = stream("a"), stream("b", "s2"), stream("c", "s3")
    for record in (a, b, c):
        await register(store, record, lease_s=1)
    await store.request_stop("b")
    await store.request_stop("elsewhere")
    assert await store.keep_streams_alive([], "worker-a", 3) == set()
    await asyncio.sleep(0.5)
    assert await store.keep_streams_alive([a, b], "worker-a", 3) == {"b"}
    await asyncio.sleep(1.5)  # past the first lease, inside the renewed one
    assert await store.lease_alive("a") is True
    assert await store.lease_alive("b") is True
    assert await store.lease_alive("c") is False


async def test_keep_streams_alive_does_not_revive_a_deleted_stream(store: Store) -> None:
    record = stream("a")
    await register(store, record)
    await store.delete_session("s1")
    assert await store.keep_streams_alive([record], "worker-a", 10) == set()
    assert await store.lease_alive("a") is False
    assert await store.get_stream("a") is None
    assert await stored_keys(store) == set()


async def test_read_tokens_returns_exactly_the_entries_after_seq_in_order(store: Store) -> None:
    payloads = {seq: {"stream_id": "a", "seq": seq, "text": f"tok{seq} ✓"} for seq in range(1, 6)}
    for seq, payload in payloads.items():
        await store.append_token("a", seq, payload)
    assert await store.read_tokens("a", 0) == [LogEntry(s, p) for s, p in payloads.items()]
    assert [e.seq for e in await store.read_tokens("a", 2)] == [3, 4, 5]
    assert await store.read_tokens("a", 5) == []
    assert await store.read_tokens("a", 99) == []
    assert await store.read_tokens("unknown", 0) == []


async def test_read_tokens_with_a_limit_returns_the_first_entries_after_seq(store: Store) -> None:
    for seq in range(1, 11):
        await store.append_token("a", seq, {"seq": seq})
    assert [e.seq for e in await store.read_tokens("a", 2, limit=3)] == [3, 4, 5]
    assert [e.seq for e in await store.read_tokens("a", 8, limit=5)] == [9, 10]
    assert await store.read_tokens("a", 0, limit=0) == []


@pytest.mark.parametrize(("count", "page"), [(25, 10), (20, 10), (3, 1000), (0, 10)])
async def test_iter_tokens_pages_through_the_whole_log(store: Store, count: int, page: int) -> None:
    for seq in range(1, count + 1):
        await store.append_token("a", seq, {"seq": seq})
    seen = [entry.seq async for entry in store.iter_tokens("a", 0, page=page)]
    assert seen == list(range(1, count + 1))
    assert [e.seq async for e in store.iter_tokens("a", max(count - 1, 0), page=page)] == (
        [count] if count else []
    )


@pytest.mark.parametrize("after", [-1, MAX_SEQ + 1, 99999999999999999999])
async def test_a_seq_out_of_range_is_a_request_error_not_an_outage(
    store: Store, after: int
) -> None:
    """Defect 15: `Last-Event-ID: 99999999999999999999` was reported as a Redis outage."""
    with pytest.raises(StoreRequestError):
        await store.read_tokens("a", after)
    with pytest.raises(StoreRequestError):
        await store.wait_tokens("a", after, 0)
    with pytest.raises(StoreRequestError):
        await anext(store.iter_tokens("a", after))
    assert not issubclass(StoreRequestError, StoreUnavailable)
    assert await store.read_tokens("a", MAX_SEQ) == []


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
    await register(store, stream("a"))
    for seq in range(1, 13):
        await store.append_token("a", seq, {"seq": seq})
    assert [e.seq for e in await store.read_tokens("a", 0)] == [8, 9, 10, 11, 12]
    assert [e.seq for e in await store.read_tokens("a", 10)] == [11, 12]
    found = await store.get_stream("a")
    assert found is not None
    assert found.last_seq == 12


async def test_finish_stream_first_caller_wins_and_its_terminal_is_kept(store: Store) -> None:
    record = stream("a")
    await register(store, record)
    assert await store.get_terminal("a") is None
    first = Terminal("stopped", "chat_done", {"stream_id": "a", "stopped": True, "seq": 4})
    assert await store.finish_stream(record, first) is True
    assert await store.finish_stream(record, terminal("error")) is False
    assert await store.get_terminal("a") == first
    assert await store.active_streams("s1") == []
    assert await store.active_streams() == []
    assert await store.lapsed_streams() == []


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


# -- presence -------------------------------------------------------------


async def test_presence_is_per_session_and_never_counts_the_asking_worker(store: Store) -> None:
    await store.mark_present("s1", "worker-a", 30)
    assert await store.present_elsewhere("s1", "worker-a") is False
    assert await store.present_elsewhere("s1", "worker-b") is True
    assert await store.present_elsewhere("s2", "worker-b") is False
    await store.mark_present("s1", "worker-b", 30)
    assert await store.present_elsewhere("s1", "worker-a") is True
    await store.clear_present("s1", "worker-b")
    assert await store.present_elsewhere("s1", "worker-a") is False
    await store.clear_present("s1", "worker-a")
    assert await stored_keys(store) == set()


async def test_presence_expires_after_its_ttl_and_leaves_no_key(store: Store) -> None:
    await store.mark_present("s1", "worker-a", 1)
    await store.mark_present("s1", "worker-b", 30)
    await store.mark_present("s1", "worker-b", 1)  # a shorter word replaces the longer
    await asyncio.sleep(1.3)
    assert await store.present_elsewhere("s1", "worker-c") is False
    assert await stored_keys(store) == set()


async def test_presence_keeps_one_key_per_session_whatever_the_workers(store: Store) -> None:
    """Defect 19: one key per worker ever seen, and one GET per worker to ask."""
    for n in range(50):
        await store.mark_present("s1", f"worker-{n}", 30)
    assert await store.present_elsewhere("s1", "worker-0") is True
    assert len(await stored_keys(store)) == 1


# -- expiry ---------------------------------------------------------------


async def test_publish_reaches_nobody_in_memory_and_the_shared_store_says_so(
    store: Store,
) -> None:
    assert await store.publish("stop", b"x") == 0
    assert store.shared is isinstance(store, RedisStore)


async def test_data_expires_after_its_ttl(make_store: StoreFactory) -> None:
    store = await make_store(session_ttl=1, log_ttl=1)
    await store.ensure_session(session("s1"))
    await store.add_message("s1", message(1, t=1))
    await register(store, stream("a", cmid="c1"))
    await store.append_token("a", 1, {"seq": 1})
    await store.request_stop("a")
    await store.finish_stream(stream("a"), terminal())
    await register(store, stream("b"), lease_s=1)

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
    assert (await register(store, stream("c"))).accepted


async def test_session_ttl_zero_keeps_sessions(make_store: StoreFactory) -> None:
    store = await make_store(session_ttl=0, log_ttl=1)
    await store.ensure_session(session("s1"))
    await store.add_message("s1", message(1, t=1))
    await register(store, stream("a", cmid="c1"))
    await asyncio.sleep(1.3)
    assert await store.get_session("s1") is not None
    assert len(await store.get_messages("s1")) == 1
    assert await store.add_message("s1", message(1, t=1)) is False
    assert await store.find_client_message("s1", "c1") == ack("a")


async def test_ping_succeeds_when_the_store_is_up(store: Store) -> None:
    """And on Redis it really asks the server."""
    before = await redis_pings(store)
    assert await store.ping() is None
    if isinstance(store, RedisStore):
        assert await redis_pings(store) > before


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
        await register(one, stream("a", cmid="c1"))
        await one.add_message("s1", message(1))
        await one.append_token("a", 1, {"seq": 1})
        await one.mark_present("s1", "worker-a", 30)
        assert await two.get_session("s1") is None
        assert await two.read_tokens("a", 0) == []
        assert await two.active_streams() == []
        keys = await stored_keys(one)
        assert len(keys) == 15  # with the owner's session list and stream slots
        assert all(key.startswith("one:") for key in keys)
    finally:
        await one.close()
        await two.close()


@pytest.mark.redis
async def test_an_argument_redis_rejects_is_a_request_error_not_an_outage(
    redis_url: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 15, at the backend: a reply error about the arguments is no outage."""
    store = RedisStore(redis_url)
    try:
        with pytest.raises(StoreRequestError, match="rejected") as raised:
            await store.refresh_lease("a", "worker-a", 1e20)  # EX out of range
        assert not isinstance(raised.value, StoreUnavailable)
        await store.ping()
    finally:
        await store.close()


@pytest.mark.redis
async def test_a_registration_refused_for_lack_of_memory_is_an_outage_and_writes_nothing(
    private_redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisStore(private_redis_server.url)
    try:
        await store.ensure_session(session("s1"))
        assert private_redis_server.command("CONFIG", "SET", "maxmemory", "1") == b"+OK"
        with pytest.raises(StoreUnavailable, match="memory"):
            await register(store, stream("a", cmid="c1"))
        assert private_redis_server.command("CONFIG", "SET", "maxmemory", "0") == b"+OK"
        assert await stored_keys(store) == {
            "chatsock:session:s1",
            "chatsock:sessions",
            "chatsock:user:anonymous:sessions",
        }
        assert (await register(store, stream("a", cmid="c1"))).accepted
    finally:
        await store.close()


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


async def test_an_append_by_the_owner_is_refused_once_another_claimed_the_end(
    store: Store,
) -> None:
    assert await store.append_token("fenced", 1, {"seq": 1}, writer="owner")
    assert await store.claim_end("fenced", "lost-elsewhere")
    assert not await store.append_token("fenced", 2, {"seq": 2}, writer="owner")
    assert [e.seq for e in await store.read_tokens("fenced", 0)] == [1]
    # The claimant itself (an owner that claimed first) may still write its last flush.
    assert await store.claim_end("mine", "owner")
    assert await store.append_token("mine", 1, {"seq": 1}, writer="owner")


@pytest.mark.redis
async def test_batched_writes_survive_a_redis_that_forgot_its_scripts(redis_url: str) -> None:  # noqa: F811
    """The pipelined writes (token-log appends, message pushes) call scripts by
    SHA; after SCRIPT FLUSH (a restarted Redis) they load them and apply each
    write exactly once."""
    store = RedisStore(redis_url, max_log_entries=100)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await store.ensure_session(session("s1"))
        await raw.script_flush()
        assert await store.add_message("s1", message(1, "hello", t=1)) is True
        await raw.script_flush()
        appends = [TokenAppend(f"st{n}", 1, {"token": f"t{n}"}) for n in range(5)]
        assert await store.append_many(appends) == [True] * 5
        assert await store.append_many(appends) == [True] * 5  # a retry adds nothing
        for n in range(5):
            assert await store.read_tokens(f"st{n}", 0) == [LogEntry(1, {"token": f"t{n}"})]
        assert [m.content for m in await store.get_messages("s1")] == ["hello"]
    finally:
        await raw.aclose()
        await store.close()


async def test_appends_of_many_streams_in_one_batch_land_in_each_log(store: Store) -> None:
    appends = [TokenAppend(f"st{n}", seq, {"seq": seq}) for n in range(20) for seq in (1, 2)]
    assert await store.append_many(appends) == [True] * 40
    assert await store.append_many([]) == []
    for n in range(20):
        assert [e.seq for e in await store.read_tokens(f"st{n}", 0)] == [1, 2]


# -- stream epochs: a log that lost entries is never appended to -------------------
async def test_a_stream_record_keeps_the_epoch_it_was_registered_with(store: Store) -> None:
    record = stream("ep")
    assert record.epoch
    assert (await register(store, record)).accepted
    found = await store.get_stream("ep")
    assert found is not None
    assert found.epoch == record.epoch
    assert stream("other").epoch != record.epoch


async def test_an_epoch_checked_append_refuses_a_log_that_lost_entries(store: Store) -> None:
    record = stream("ep")
    await register(store, record)
    epoch = record.epoch
    for seq in (1, 2, 3):
        assert await store.append_token("ep", seq, {"seq": seq}, epoch=epoch) == Appended.OK
    assert await store.append_token("ep", 2, {"seq": 2}, epoch=epoch) == Appended.OK  # a retry
    # A seq past the next one would leave a hole (the log lost seq 4).
    assert await store.append_token("ep", 5, {"seq": 5}, epoch=epoch) == Appended.LOST
    # The whole log vanished (a failover to a replica that never had it).
    await store._delete(store._tk("ep", "log"))
    assert await store.append_token("ep", 4, {"seq": 4}, epoch=epoch) == Appended.LOST
    assert await store.read_tokens("ep", 0) == []


async def test_an_epoch_checked_append_refuses_another_epochs_log(store: Store) -> None:
    record = stream("ep")
    await register(store, record)
    assert await store.append_token("ep", 1, {"seq": 1}, epoch="another") == Appended.OK
    assert await store.append_token("ep", 2, {"seq": 2}, epoch=record.epoch) == Appended.LOST
    assert [e.seq for e in await store.read_tokens("ep", 0)] == [1]


async def test_an_epoch_checked_append_is_lost_once_the_record_is_gone(store: Store) -> None:
    record = stream("ep")
    await register(store, record)
    assert await store.append_token("ep", 1, {"seq": 1}, epoch=record.epoch) == Appended.OK
    await store._delete(store._tk("ep"))
    assert await store.append_token("ep", 2, {"seq": 2}, epoch=record.epoch) == Appended.LOST
    # The fence still comes first: a stream taken for lost is TAKEN, not LOST.
    await register(store, stream("taken"))
    assert await store.claim_end("taken", "elsewhere")
    taken = await store.append_token("taken", 1, {"seq": 1}, writer="owner", epoch="e")
    assert taken == Appended.TAKEN
