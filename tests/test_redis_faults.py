"""Redis faults against real redis-server processes: a stall, a loss of recent
writes (as a failover to a lagging replica causes), and a restart.

Stall and restart run two real `chatsock serve` workers with python clients
following on both; the loss cases run one app in-process against a real
redis-server, deleting keys under it mid-stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    check_terminals_agree,
    half_done_streams,
    log_problems,
    merge_tokens,
    occupied_slots,
    seen,
    worker_problems,
)
from tests.support.process import Worker
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

PREFIX = "chatsock"  # store.key_prefix's default
OP_TIMEOUT_S = 2.0  # store.op_timeout_s of the workers: shorter than the stall
STALL_S = 5.0
SLACK_S = 5.0
STREAMS_PER_WORKER = 3
# Logged by design while Redis does not answer.
EXPECTED_ERRORS = (
    r"the token log stayed unreachable",
    r"the store stayed unreachable",
    r"the final flush failed",
    r"Redis is not reachable",
    r"Timeout",
)


def _pid(redis: RedisServer) -> int:
    process = redis._process  # the test owns this server; it has no pid accessor
    assert process is not None
    return process.pid


def _workers(redis: RedisServer, tps: int) -> tuple[Worker, Worker]:
    common = {
        "REDIS_URL": redis.url,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": str(tps),
        "CHATSOCK_STREAM__LEASE_S": "3",
        "CHATSOCK_STORE__OP_TIMEOUT_S": str(OP_TIMEOUT_S),
    }
    return (
        Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-a"}),
        Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-b"}),
    )


@pytest.fixture
async def pair(private_redis_server: RedisServer) -> AsyncIterator[tuple[Worker, Worker]]:
    a, b = _workers(private_redis_server, tps=20)
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    try:
        yield a, b
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def _client(clients: list[RecordingClient], worker: Worker) -> RecordingClient:
    client = await RecordingClient().connect(worker.url)
    clients.append(client)
    return client


async def _messages(redis_url: str, session_id: str) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.lrange(f"{PREFIX}:session:{session_id}:messages", 0, -1)
    finally:
        await client.aclose()
    return [orjson.loads(item) for item in raw]


async def _until(check: Any, within: float) -> list[str]:
    """`check()`'s problems once there are none, or its last answer after `within`."""
    deadline = time.monotonic() + within
    while True:
        problems: list[str] = await check()
        if not problems or time.monotonic() > deadline:
            return problems
        await asyncio.sleep(0.2)


Followed = tuple[
    dict[Worker, RecordingClient],
    dict[Worker, RecordingClient],
    list[tuple[Worker, dict[str, Any]]],
]


async def _followed_streams(
    pair: tuple[Worker, Worker], clients: list[RecordingClient], label: str
) -> Followed:
    """STREAMS_PER_WORKER streams started on each worker, each followed from seq 1
    by a client of the other worker too; returns once each has sent 3 tokens.
    (owner-side client by worker, other-side client by owning worker, acks)."""
    a, b = pair
    owners = {a: await _client(clients, a), b: await _client(clients, b)}
    followers = {a: await _client(clients, b), b: await _client(clients, a)}
    acks: list[tuple[Worker, dict[str, Any]]] = []
    for worker, client in owners.items():
        for n in range(STREAMS_PER_WORKER):
            session_id = f"{label}-{worker.port}-{n}"
            body = {"message": f"{label} {worker.port} {n}", "session_id": session_id}
            ack = await client.call("chat_stream", body)
            assert ack["ok"], ack
            acks.append((worker, ack))
    for worker, ack in acks:
        follower = followers[worker]
        joined = await follower.call("session_join", {"session_id": ack["session_id"]})
        assert joined["ok"], joined
        resumed = await follower.call("chat_resume", {"stream_id": ack["stream_id"], "after": 0})
        assert resumed["ok"], resumed
    for worker, ack in acks:
        sid = ack["stream_id"]
        await owners[worker].wait_for(lambda _, s=sid, w=worker: len(owners[w].tokens(s)) >= 3)
    return owners, followers, acks


async def _settled(redis: RedisServer, pair: tuple[Worker, Worker]) -> list[str]:
    """No slot, half-done stream, active stream or task left; both workers ready."""

    async def check() -> list[str]:
        found = await occupied_slots(redis.url, PREFIX)
        found += await half_done_streams(redis.url, PREFIX)
        async with aiohttp.ClientSession() as http:
            for worker in pair:
                found += await worker_problems(http, worker.url)
        return found

    return await _until(check, within=15)


async def _serving(owners: dict[Worker, RecordingClient]) -> list[str]:
    """A new stream on each worker runs to its end."""
    problems = []
    for worker, client in owners.items():
        fresh = await client.call("chat_stream", {"message": "afterwards"}, within=20)
        if not fresh.get("ok"):
            problems.append(f"{worker.url}: a new chat_stream answered {fresh}")
            continue
        event, _ = await client.wait_terminal(fresh["stream_id"], within=30)
        if event != "chat_complete":
            problems.append(f"{worker.url}: the new stream ended {event}")
    return problems


# -- stall ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
async def test_a_redis_stall_mid_stream_ends_every_stream_and_leaves_the_workers_serving(
    pair: tuple[Worker, Worker], private_redis_server: RedisServer, clients: list[RecordingClient]
) -> None:
    """Redis is SIGSTOPped for 5 s while six streams run (three owned by each worker,
    each followed on both workers from seq 1), then SIGCONT. Every follower gets every
    seq once and one terminal (finished, or an explicit error), none later than the
    op timeout (+ slack) after Redis answers again; no worker crashes; every reply is
    stored once; no slot or task is left; new streams work on both workers."""
    a, b = pair
    redis = private_redis_server
    owners, followers, acks = await _followed_streams(pair, clients, "stall")

    os.kill(_pid(redis), signal.SIGSTOP)
    try:
        await asyncio.sleep(STALL_S)
    finally:
        os.kill(_pid(redis), signal.SIGCONT)
    resumed_at = time.monotonic()

    problems: list[str] = []
    late: list[float] = []
    for worker, ack in acks:
        sid = ack["stream_id"]
        for client in (owners[worker], followers[worker]):
            left = resumed_at + OP_TIMEOUT_S + SLACK_S - time.monotonic()
            try:
                await client.wait_terminal(sid, within=max(left, 0.01))
            except TimeoutError:
                problems.append(f"{sid}: no terminal {OP_TIMEOUT_S + SLACK_S:g} s after SIGCONT")
            late.append(time.monotonic() - resumed_at)
    ends: dict[str, int] = {}
    for worker, ack in acks:
        sid = ack["stream_id"]
        views = [seen(owners[worker].events, sid), seen(followers[worker].events, sid)]
        tokens, merged = merge_tokens(sid, views)
        problems += merged
        for label, view in zip(("owner-side", "other-side"), views, strict=True):
            problems += check_follower(
                f"{sid} {label}", view, start=1, must_end=True, tokens=tokens
            )
        problems += check_terminals_agree(sid, [t for v in views for t in v.terminals[:1]])
        terminal = views[0].terminals[0] if views[0].terminals else None
        if terminal is not None:
            code = terminal[0] if terminal[0] == "chat_complete" else terminal[1]["code"]
            ends[code] = ends.get(code, 0) + 1
        messages = await _messages(redis.url, ack["session_id"])
        problems += check_persisted(sid, messages, ack["message_id"], terminal)
    print(f"\nstall: ends {ends}; last terminal {max(late):.2f} s after SIGCONT")
    for worker in (a, b):
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            problems.append(f"{worker.url} exited with {worker.proc.returncode}")

    problems += await _serving(owners)
    problems += await _settled(redis, pair)
    for worker in (a, b):
        problems += log_problems(worker.url, worker.log(), EXPECTED_ERRORS)
    assert_none(problems)


# -- loss: the token log or the stream record vanishes mid-stream ----------------------
LOSSES = ("log", "record", "flushall")


async def _lose(redis_url: str, stream_id: str, loss: str) -> None:
    """What a failover to a replica that lagged does to a stream: its log, its
    record, or everything is gone."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        if loss == "flushall":
            await client.flushall()
        else:
            key = f"{PREFIX}:stream:{stream_id}" + (":log" if loss == "log" else "")
            assert await client.delete(key) == 1
    finally:
        await client.aclose()


@pytest.mark.parametrize("loss", LOSSES)
async def test_a_stream_whose_log_or_record_vanishes_ends_stream_lost_and_resumes_say_so(
    start_server: Any, connect: Any, redis_url: str, loss: str
) -> None:
    """Mid-stream the store loses the stream's log, its record, or everything. The
    owner's next append sees that the log is not its epoch's and ends the stream with
    `stream_lost` and the text sent so far (to the owner's follower and to one that
    resumed from seq 0), never appending a log with a hole. Resuming it afterwards,
    over Socket.IO or SSE, from the last seq or with a stale epoch, is `stream_lost`
    too: never silence, never a log served as if whole."""
    provider = ScriptedProvider("fake")
    script = provider.enqueue("one ", "two ")
    gate = script.gate()
    script.text("three ", "four")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, store={"redis_url": redis_url}
    )
    owner, follower, late = await connect(server), await connect(server), await connect(server)
    session_id = f"lost-{loss}"
    ack = await owner.call("chat_stream", {"message": "hi", "session_id": session_id})
    assert ack["ok"], ack
    sid = ack["stream_id"]
    await owner.wait_for(lambda _: "".join(t["token"] for t in owner.tokens(sid)) == "one two ")
    joined = await follower.call("session_join", {"session_id": session_id})
    epoch = joined["active_stream"]["epoch"]
    assert epoch
    assert (await follower.call("chat_resume", {"stream_id": sid, "after": 0}))["ok"]
    last = owner.tokens(sid)[-1]["seq"]

    await _lose(redis_url, sid, loss)
    gate.set()
    problems: list[str] = []
    for client in (owner, follower):
        event, end = await client.wait_terminal(sid, within=10)
        assert (event, end["code"], end["partial"]) == (
            "chat_stream_error",
            "stream_lost",
            "one two ",
        )
        assert "reload the session" in end["error"]
        problems += check_follower(sid, seen(client.events, sid), start=1, must_end=True)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        logged = await raw.xlen(f"{PREFIX}:stream:{sid}:log")
    finally:
        await raw.aclose()
    # Nothing appended after the loss (the record's loss leaves the log as it was).
    assert logged == (last if loss == "record" else 0), "the owner appended after the loss"
    messages = await _messages(redis_url, session_id)
    if loss == "flushall":
        assert messages == []  # the session is gone: the reply does not recreate it
    else:
        terminal = seen(owner.events, sid).terminals[0]
        problems += check_persisted(sid, messages, ack["message_id"], terminal)
    assert_none(problems)

    # Resuming across the loss is told so, over Socket.IO and over SSE.
    resumed = await late.call("chat_resume", {"stream_id": sid, "after": last})
    assert resumed["ok"] is False
    assert resumed["error"]["code"] == "stream_lost", resumed
    base = f"http://127.0.0.1:{server.port}/api/chat/stream/{sid}"
    async with aiohttp.ClientSession() as http:
        for query, headers in (("", {"Last-Event-ID": str(last)}), ("?epoch=stale0", {})):
            async with http.get(base + query, headers=headers) as reply:
                body = await reply.json()
            assert (reply.status, body["error"]["code"]) == (410, "stream_lost"), (query, body)
        # With its epoch and from seq 0: the stream ended stream_lost, nothing to replay.
        async with http.get(f"{base}?epoch={epoch}") as reply:
            body = await reply.json()
        assert (reply.status, body["error"]["code"]) == (410, "stream_lost"), body
    assert not [t for t in late.events if t[0] == "chat_token"]


# -- restart -----------------------------------------------------------------------
STOP_BOUND_S = 0.1  # the promise for a cross-worker stop
# A 2-core test box shared with other test runs (load average up to ~9): the
# stop's own path is ~40-60 ms there, persisting the stopped reply before its
# terminal goes out another 10-80 ms.
STOP_SLACK_S = 0.15
RESTARTS = 5
# The worst round may meet a scheduling hiccup of the loaded box; without the
# fixes (a listener backing off for up to 2 s, a missed signal waiting for the
# 0.5 s upkeep) rounds took up to 309 ms on a quiet box and far more under load.
WORST_S = 0.5


def _restart_keeping_data(redis: RedisServer) -> None:
    """Restart redis-server on its port as one with persistence restarts: SHUTDOWN
    SAVE writes a snapshot and exits at once (nothing is written in between), and
    the new process loads it."""
    try:
        redis.command("SHUTDOWN", "SAVE")
    except ConnectionError:
        pass  # it closes the connection instead of answering
    process = redis._process  # the test owns this server
    assert process is not None
    process.wait(10)
    redis.start()


@pytest.mark.timeout(120)
async def test_a_cross_worker_stop_right_after_a_redis_restart_lands_within_100_ms(
    pair: tuple[Worker, Worker], private_redis_server: RedisServer, clients: list[RecordingClient]
) -> None:
    """A stream runs on worker A, followed on A and B. Redis restarts (its data kept);
    as soon as it answers PING, the stop is sent from B. The terminal reaches A's
    client within 100 ms of the stop (+ 150 ms slack for a loaded test box): the
    signal listeners are subscribed again at once, and a stop sent before they are
    is repeated. Three restarts, each measured."""
    a, b = pair
    redis = private_redis_server
    on_a, on_b = await _client(clients, a), await _client(clients, b)
    took: list[float] = []
    problems: list[str] = []
    for n in range(RESTARTS):
        session_id = f"restart-{n}"
        ack = await on_a.call("chat_stream", {"message": f"restart {n}", "session_id": session_id})
        assert ack["ok"], ack
        sid = ack["stream_id"]
        assert (await on_b.call("session_join", {"session_id": session_id}))["ok"]
        assert (await on_b.call("chat_resume", {"stream_id": sid, "after": 0}))["ok"]
        await on_a.wait_for(lambda _, s=sid: len(on_a.tokens(s)) >= 3)
        await asyncio.to_thread(_restart_keeping_data, redis)
        started = time.monotonic()
        stopping = asyncio.ensure_future(on_b.call("chat_stop", {"stream_id": sid}))
        event, done = await on_a.wait_terminal(sid, within=10)
        took.append(time.monotonic() - started)
        answer = await stopping
        assert answer == {"ok": True, "stopped": True}, answer
        assert (event, done["stopped"]) == ("chat_complete", True), done
        await on_b.wait_terminal(sid, within=10)
        views = [seen(on_a.events, sid), seen(on_b.events, sid)]
        tokens, merged = merge_tokens(sid, views)
        problems += merged
        for view in views:
            problems += check_follower(sid, view, start=1, must_end=True, tokens=tokens)
        problems += check_terminals_agree(sid, [v.terminals[0] for v in views if v.terminals])
        messages = await _messages(redis.url, session_id)
        problems += check_persisted(sid, messages, ack["message_id"], views[0].terminals[0])
    print(f"\ncross-worker stop after a Redis restart: {[round(t * 1000, 1) for t in took]} ms")
    assert_none(problems)
    assert statistics.median(took) < STOP_BOUND_S + STOP_SLACK_S, took
    assert max(took) < WORST_S, took


@pytest.mark.timeout(120)
async def test_a_flushall_mid_stream_ends_every_stream_stream_lost_on_both_workers(
    pair: tuple[Worker, Worker], private_redis_server: RedisServer, clients: list[RecordingClient]
) -> None:
    """Everything in Redis vanishes while six streams run over two workers, each
    followed on both (a failover to an empty replica). Every follower gets its seqs
    in order, once, from 1, and one `stream_lost` end whose partial is the text it
    got (a follower on the other worker may have missed the last entries the store
    lost before they were relayed: its end says what it got); resuming any of them
    is `stream_lost`; no worker crashes, nothing is left held, and new streams work
    on both workers."""
    a, b = pair
    redis = private_redis_server
    owners, followers, acks = await _followed_streams(pair, clients, "flush")
    await asyncio.to_thread(redis.flush)
    problems: list[str] = []
    late = await _client(clients, b)
    for worker, ack in acks:
        sid = ack["stream_id"]
        views = []
        for client in (owners[worker], followers[worker]):
            try:
                await client.wait_terminal(sid, within=10)
            except TimeoutError:
                problems.append(f"{sid}: no terminal 10 s after the flush")
            views.append(seen(client.events, sid))
        problems += merge_tokens(sid, views)[1]
        for view in views:
            problems += check_follower(sid, view, start=1, must_end=True)
            codes = [t[1].get("code") for t in view.terminals]
            if codes != ["stream_lost"]:
                problems.append(f"{sid}: ended {view.terminals[:1]}, not stream_lost")
        last = max(views[0].seqs, default=0)
        answer = await late.call("chat_resume", {"stream_id": sid, "after": last})
        if answer.get("error", {}).get("code") != "stream_lost":
            problems.append(f"{sid}: chat_resume after the flush answered {answer}")
    problems += await _serving(owners)
    problems += await _settled(redis, pair)
    for worker in (a, b):
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            problems.append(f"{worker.url} exited with {worker.proc.returncode}")
        problems += log_problems(worker.url, worker.log())
    assert_none(problems)
