"""chatsock on Redis over TLS with a password, through Sentinel, and on a Cluster.

Every topology is real redis-server processes on loopback (tests/support/
redis_topology.py). The store contract suite runs on each of them
(tests/test_store_contract.py); here: the settings that choose a topology,
what only one topology promises (TLS refuses plain text, Cluster keeps every
key in one slot, Sentinel follows a failover), python-socketio's manager on
each, and two real `chatsock serve` workers streaming over each.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from chatsock.config import ConfigError, StoreConfig, load_settings
from chatsock.sio_manager import WatchedRedisManager, manager_options
from chatsock.store.base import StoreUnavailable
from chatsock.store.models import SessionInfo
from chatsock.store.redis import RedisStore
from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    check_stop_acks,
    check_terminals_agree,
    check_text,
    half_done_streams,
    merge_tokens,
    occupied_slots,
    seen,
    worker_problems,
)
from tests.support.process import Worker
from tests.support.redis_topology import (
    PASSWORD,
    TOPOLOGIES,
    ClusterRedis,
    SentinelRedis,
    TlsRedis,
    Topologies,
    Topology,
    free_port_pair,
    redis_topologies,  # noqa: F401
)

pytestmark = pytest.mark.redis

STREAMS = 8  # streams at once in the end-to-end test, one session each


@pytest.fixture(params=list(TOPOLOGIES))
def topology(request: pytest.FixtureRequest, redis_topologies: Topologies) -> Topology:  # noqa: F811
    """Each topology in turn, shared by the session, emptied for this test."""
    return redis_topologies.get(request.param)


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Await `check` every 0.1 s until it holds; its last answer after `within`."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() >= deadline:
            return await check()
        await asyncio.sleep(0.1)
    return True


# -- settings -------------------------------------------------------------------------


def _store_error(tmp_path: Path, **store: Any) -> str:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigError) as raised:
        load_settings(empty, store=store)
    return str(raised.value)


@pytest.mark.parametrize(
    ("store", "named"),
    [
        ({"redis_url": "redis://r/0", "redis_sentinels": ["s:26379"]}, "redis_sentinel_master"),
        ({"redis_url": "redis://r/0", "redis_sentinel_master": "m"}, "store.redis_sentinels"),
        ({"redis_url": "redis://r/0", "redis_sentinels": ["s"], "redis_sentinel_master": "m"},
         "'s' is not host:port"),
        ({"redis_url": "redis://r/0", "redis_cluster": True, "redis_sentinels": ["s:1"],
          "redis_sentinel_master": "m"}, "store.redis_cluster: cannot be combined"),
        ({"redis_cluster": True}, "store.redis_url (REDIS_URL): needed with store.redis_cluster"),
        ({"redis_url": "redis://r:6379/2", "redis_cluster": True}, "only database 0"),
        ({"redis_url": "unix:///tmp/r.sock", "redis_cluster": True}, "redis:// or rediss://"),
    ],
)  # fmt: skip
def test_topology_settings_that_disagree_are_refused_naming_the_field(
    tmp_path: Path, store: dict[str, Any], named: str
) -> None:
    assert named in _store_error(tmp_path, **store)


def test_sentinels_are_read_from_a_comma_separated_environment_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@mymaster/1")
    monkeypatch.setenv("CHATSOCK_STORE__REDIS_SENTINELS", "10.0.0.5:26379, 10.0.0.6:26379")
    monkeypatch.setenv("CHATSOCK_STORE__REDIS_SENTINEL_MASTER", "mymaster")
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    store = load_settings(empty).store
    assert store.sentinel_addresses() == (("10.0.0.5", 26379), ("10.0.0.6", 26379))


def test_the_manager_url_names_the_sentinels_and_keeps_passwords_out_of_it() -> None:
    store = StoreConfig(
        redis_url="rediss://:master-pw@ignored/2?ssl_ca_certs=/ca.pem",
        redis_sentinels=["10.0.0.5:26379", "10.0.0.6:26379"],
        redis_sentinel_master="mymaster",
        redis_sentinel_password="sentinel-pw",  # type: ignore[arg-type]
    )
    url, options = manager_options(store)
    assert url == "redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/2/mymaster"
    assert options["password"] == "master-pw"
    assert options["ssl"] is True
    assert options["ssl_ca_certs"] == "/ca.pem"
    assert options["sentinel_kwargs"] == {
        "ssl": True,
        "ssl_ca_certs": "/ca.pem",
        "password": "sentinel-pw",
    }
    one = StoreConfig(redis_url="rediss://:pw@r:6380/0", redis_cluster=True)
    assert manager_options(one) == ("rediss://:pw@r:6380/0", {})


# -- what one topology promises -------------------------------------------------------


async def test_tls_redis_refuses_plain_text_and_a_wrong_password_is_reported_masked(
    redis_topologies: Topologies,  # noqa: F811
) -> None:
    tls = redis_topologies.get("tls")
    assert isinstance(tls, TlsRedis)
    assert await asyncio.to_thread(tls.plain_handshake_refused)
    wrong = tls.url.replace(PASSWORD, "not-the-password")
    store = RedisStore(wrong)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
    finally:
        await store.close()
    text = str(raised.value)
    assert "refused the login" in text
    assert "rediss://***@127.0.0.1" in text
    assert "not-the-password" not in text


async def test_tls_without_the_ca_fails_to_verify_the_server(
    redis_topologies: Topologies,  # noqa: F811
) -> None:
    tls = redis_topologies.get("tls")
    store = RedisStore(tls.url.partition("?")[0], retries=0)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
    finally:
        await store.close()
    assert "certificate verify failed" in str(raised.value)
    assert PASSWORD not in str(raised.value)


async def test_unreachable_sentinels_raise_store_unavailable_naming_them_without_passwords() -> (
    None
):
    port = free_port_pair()
    store = RedisStore(
        "redis://:master-s3cret@mymaster/0",
        sentinels=[("127.0.0.1", port)],
        sentinel_master="mymaster",
        sentinel_password="sentinel-s3cret",
        retries=0,
    )
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
    finally:
        await store.close()
    text = str(raised.value)
    assert f"Sentinel master 'mymaster' via 127.0.0.1:{port}" in text
    assert "s3cret" not in text


async def test_an_unreachable_cluster_raises_store_unavailable_without_the_password() -> None:
    port = free_port_pair()
    store = RedisStore(f"redis://:cluster-s3cret@127.0.0.1:{port}/0", cluster=True, retries=0)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
    finally:
        await store.close()
    text = str(raised.value)
    assert f"Redis is not reachable at redis://***@127.0.0.1:{port}/0 (Redis Cluster)" in text
    assert "s3cret" not in text


async def test_cluster_keeps_every_key_of_the_store_in_one_slot_under_one_hash_tag(
    redis_topologies: Topologies,  # noqa: F811
) -> None:
    cluster = redis_topologies.get("cluster")
    assert isinstance(cluster, ClusterRedis)
    store = RedisStore(**cluster.store_options())
    try:
        for n in range(20):
            session_id = f"s{n}"
            await store.ensure_session(SessionInfo(session_id, "2026-01-01", "2026-01-01"))
            await store.take_all([(f"user:{n}", 1.0, 10), (f"ip:{n}", 1.0, 10)])
            await store.hold(f"conn:{n}", "sid", 5, 30)
            await store.add_usage(f"tokens:{n}", 5, 60)
        keys = await asyncio.to_thread(cluster.keys)
        by_node = await asyncio.to_thread(cluster.keys_by_node)
    finally:
        await store.close()
    assert len(keys) > 20
    assert all(key.startswith("{chatsock}:") for key in keys), sorted(keys)[:5]
    assert sorted(by_node.values())[:-1] == [0] * (len(by_node) - 1), by_node


async def test_commands_wait_for_a_free_connection_instead_of_failing(
    topology: Topology,
) -> None:
    """Many more commands at once than `max_connections`: every one waits its
    turn, on a Cluster too (redis-py's cluster nodes would fail them at once)."""
    store = RedisStore(**topology.store_options(), max_connections=2)
    try:
        sessions = [SessionInfo(f"s{n}", "2026-01-01", "2026-01-01") for n in range(200)]
        await asyncio.gather(*(store.ensure_session(s) for s in sessions))
        found = await asyncio.gather(*(store.get_session(s.session_id) for s in sessions))
    finally:
        await store.close()
    assert all(f is not None for f in found)


async def test_sentinel_failover_the_store_follows_the_new_master() -> None:
    """SENTINEL FAILOVER promotes the replica: commands and the subscription
    reach the new master without a new store."""
    sentinel = await asyncio.to_thread(lambda: SentinelRedis().start())
    store = RedisStore(**sentinel.store_options())
    try:
        await store.ensure_session(SessionInfo("before", "2026-01-01", "2026-01-01"))
        async with store.subscribe("stop") as messages:
            old = sentinel.master_address()
            new = await asyncio.to_thread(sentinel.failover)
            assert new != old

            async def write_after_failover() -> bool:
                try:
                    await store.ensure_session(SessionInfo("after", "2026-01-01", "2026-01-01"))
                except StoreUnavailable:
                    return False
                return True

            assert await eventually(write_after_failover, within=30)
            assert await store.get_session("before") is not None

            async def heard() -> bool:
                await store.publish("stop", b"ping")
                try:
                    async with asyncio.timeout(1):
                        return await anext(messages) == ("stop", b"ping")
                except TimeoutError:
                    return False

            assert await eventually(heard, within=30)
    finally:
        await store.close()
        await asyncio.to_thread(sentinel.close)


# -- python-socketio's manager --------------------------------------------------------


async def test_the_socketio_manager_carries_messages_between_workers(
    topology: Topology,
) -> None:
    """Two managers built from the store settings (manager_options), as two
    workers build them: one's publish reaches the other's listener."""
    store = StoreConfig(**topology.settings())
    url, options = manager_options(store)
    sender = WatchedRedisManager(url, "chatsock:socketio", dict(options))
    receiver = WatchedRedisManager(url, "chatsock:socketio", dict(options))
    heard: list[Any] = []

    async def listen() -> None:
        async for data in receiver._listen():
            heard.append(data)

    # The receiver's listener, as a worker runs it (aclose stops it).
    receiver.thread = asyncio.create_task(listen())
    try:

        async def delivered() -> bool:
            await sender._publish({"method": "emit", "event": "probe"})
            await asyncio.sleep(0.05)
            return bool(heard)

        assert await eventually(delivered, within=15)
        assert b"probe" in heard[0] or "probe" in str(heard[0])
    finally:
        await sender.aclose()
        await receiver.aclose()


# -- two real workers -----------------------------------------------------------------


@pytest.fixture
async def workers(topology: Topology) -> AsyncIterator[tuple[Worker, Worker]]:
    common = {
        **topology.env(),
        # About 5 s a stream: long enough for the other worker to stop it mid-way.
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "15",
        "CHATSOCK_STREAM__LEASE_S": "3",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": str(STREAMS + 2),
    }
    a = Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-a"})
    b = Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-b"})
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    yield a, b
    await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


@pytest.fixture
def rng() -> random.Random:
    return random.Random(11)


async def test_two_workers_stream_follow_and_stop_across_workers(
    topology: Topology,
    workers: tuple[Worker, Worker],
    clients: list[RecordingClient],
    http: aiohttp.ClientSession,
    rng: random.Random,
) -> None:
    """Streams start on worker A; on worker B a second client joins each session,
    resumes from 0 and stops half of them. Every follower on either worker gets
    every token once and one terminal; replies are stored once; nothing is left.
    The waits are generous (a shared box): no timing is asserted."""
    a, b = workers
    on_a = [await RecordingClient().connect(a.url) for _ in range(STREAMS)]
    on_b = [await RecordingClient().connect(b.url) for _ in range(STREAMS)]
    clients += on_a + on_b
    acks = await asyncio.gather(
        *(
            c.call("chat_stream", {"message": f"topology stream {n}"}, within=30)
            for n, c in enumerate(on_a)
        )
    )
    assert all(ack["ok"] for ack in acks), acks
    stopped = set(rng.sample(range(STREAMS), STREAMS // 2))
    stop_acks: dict[str, list[dict[str, Any]]] = {ack["stream_id"]: [] for ack in acks}

    async def follow_on_b(n: int) -> None:
        ack, client = acks[n], on_b[n]
        joined = await client.call("session_join", {"session_id": ack["session_id"]}, within=30)
        assert joined["ok"], joined
        resume = {"stream_id": ack["stream_id"], "after": 0}
        resumed = await client.call("chat_resume", resume, within=30)
        assert resumed["ok"], resumed
        if n in stopped:
            await client.wait_for(lambda _: len(client.tokens(ack["stream_id"])) >= 2, within=30)
            reply = await client.call("chat_stop", {"stream_id": ack["stream_id"]}, within=30)
            stop_acks[ack["stream_id"]].append(reply)

    await asyncio.gather(*(follow_on_b(n) for n in range(STREAMS)))
    for n, ack in enumerate(acks):
        await on_a[n].wait_terminal(ack["stream_id"], within=60)
        await on_b[n].wait_terminal(ack["stream_id"], within=60)

    problems: list[str] = []
    for n, ack in enumerate(acks):
        stream_id = ack["stream_id"]
        views = [seen(on_a[n].events, stream_id), seen(on_b[n].events, stream_id)]
        tokens, merged = merge_tokens(stream_id, views)
        problems += merged
        for where, view in zip(("a", "b"), views, strict=True):
            problems += check_follower(f"{stream_id}@{where}", view, start=1, must_end=True,
                                       tokens=tokens)  # fmt: skip
        terminals = [t for v in views for t in v.terminals]
        problems += check_terminals_agree(stream_id, terminals)
        terminal = terminals[0] if terminals else None
        if terminal is not None:
            problems += check_text(stream_id, terminal, tokens)
        problems += check_stop_acks(stream_id, stop_acks[stream_id], terminal)
        if n in stopped and not any(r.get("stopped") for r in stop_acks[stream_id]):
            problems.append(f"{stream_id}: a stop from the other worker did not stop it")
        async with http.get(f"{b.url}/api/chat/sessions/{ack['session_id']}") as reply:
            messages = (await reply.json())["messages"]
        problems += check_persisted(stream_id, messages, ack["message_id"], terminal)

    for worker in (a, b):
        assert await eventually(lambda w=worker: _idle(http, w), within=15)
        problems += await worker_problems(http, worker.url)
    prefix = "{chatsock}" if isinstance(topology, ClusterRedis) else "chatsock"
    data_url = await asyncio.to_thread(topology.data_url, "chatsock")
    problems += await occupied_slots(data_url, prefix)
    problems += await half_done_streams(data_url, prefix)
    assert_none(problems)
    assert len(stopped) == sum(any(r.get("stopped") for r in v) for v in stop_acks.values())


async def _idle(http: aiohttp.ClientSession, worker: Worker) -> bool:
    async with http.get(f"{worker.url}/api/chat/stream/active") as reply:
        body = await reply.json()
    return reply.status == 200 and not body.get("count")


async def test_deleting_a_session_on_one_worker_tells_its_members_on_the_other(
    workers: tuple[Worker, Worker],
    clients: list[RecordingClient],
    http: aiohttp.ClientSession,
) -> None:
    """session_deleted crosses workers through python-socketio's Redis manager."""
    a, b = workers
    member = await RecordingClient().connect(a.url)
    clients.append(member)
    ack = await member.call("chat_stream", {"message": "delete me elsewhere"})
    await member.wait_terminal(ack["stream_id"], within=30)

    async with http.delete(f"{b.url}/api/chat/sessions/{ack['session_id']}") as reply:
        assert reply.status == 200, await reply.text()
    deleted = await member.wait_event("session_deleted", within=15)
    assert deleted["session_id"] == ack["session_id"]


def test_the_socketio_package_is_the_one_whose_manager_we_extend() -> None:
    assert issubclass(WatchedRedisManager, socketio.AsyncRedisManager)
