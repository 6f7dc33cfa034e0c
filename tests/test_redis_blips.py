"""Redis connections that drop at random: retries never duplicate, failures leave nothing half-done.

The app reaches a real redis-server through a loopback TCP proxy
(tests/support/tcp_proxy.py) that drops connections: at random after
forwarded chunks, all at once now and then, or exactly after a chosen
command reached Redis (the command runs, its reply is lost, the client
retries). Every client keeps its own Socket.IO connection straight to the
app. The store is read directly, past the proxy: during an outage (no
registration may be half-written then) and afterwards.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import socketio
from aiohttp.test_utils import TestServer

from chatsock.app import RUNNER
from tests.fakes.provider import Script, ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    half_done_streams,
    half_registered,
    occupied_slots,
    seen,
)
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import Cut, TcpProxy
from tests.support.waiting import poll_until

pytestmark = pytest.mark.redis

PREFIX = "blips"
SEED = 6
SESSIONS = 5
PER_SESSION = 4  # streams running at once in each session
ROUNDS = 2
Connect = Callable[[TestServer], Awaitable[RecordingClient]]


@pytest.fixture
async def proxy(redis_url: str, redis_server: RedisServer) -> AsyncIterator[TcpProxy]:
    async with TcpProxy("127.0.0.1", redis_server.port, seed=SEED) as started:
        yield started


def _paced(provider: ScriptedProvider, count: int, pieces: int = 25) -> None:
    for n in range(count):
        steps: list[object] = []
        for i in range(pieces):
            steps += [f"r{n}.{i} ", 0.015]
        provider.scripts.append(Script(steps))


async def _server(start_server: Any, proxy: TcpProxy, provider: ScriptedProvider) -> TestServer:
    server: TestServer = await start_server(
        chain=["fake"],
        providers={"fake": provider},
        store={"redis_url": proxy.url, "key_prefix": PREFIX},
        stream={"lease_s": 3, "log_ttl": 60},
        limits={"max_streams_per_session": PER_SESSION},
    )
    return server


async def _messages(redis_url: str, session_id: str) -> list[dict[str, Any]]:
    """A session's stored messages, read straight from Redis (not through the proxy)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.lrange(f"{PREFIX}:session:{session_id}:messages", 0, -1)
    finally:
        await client.aclose()
    return [orjson.loads(item) for item in raw]


def _codes(acks: list[dict[str, Any]]) -> str:
    """`store_unavailable x9, ok`: the answers to one request and its retries."""
    codes = ["ok" if a.get("ok") else a["error"]["code"] for a in acks]
    runs: list[list[Any]] = []
    for code in codes:
        if runs and runs[-1][0] == code:
            runs[-1][1] += 1
        else:
            runs.append([code, 1])
    return ", ".join(c if n == 1 else f"{c} x{n}" for c, n in runs)


async def _start(client: RecordingClient, request: dict[str, Any]) -> list[dict[str, Any]]:
    """chat_stream, retried with the same client_message_id while the store fails;
    every ack it got."""
    acks = []
    for _ in range(30):
        try:
            ack = await client.call("chat_stream", request, within=20)
        except socketio.exceptions.TimeoutError:
            ack = {"ok": False, "error": {"code": "ack_timeout"}}
        acks.append(ack)
        if ack.get("ok") or ack["error"]["code"] not in ("store_unavailable", "ack_timeout"):
            return acks
        await asyncio.sleep(0.3)
    return acks


# Chunks that carry a write whose loss or repetition matters: a message, a stream's
# registration (its record), its slot, its end.
WRITES = (b'"role":"', b'"owner":', b":active", b":end")
MAX_BLACKOUTS = 6


def _blackouts(
    proxy: TcpProxy, rng: random.Random, on_blackout: Callable[[], None]
) -> Callable[[bytes], Cut]:
    """Now and then, right after such a write reached Redis, an outage of a few
    seconds: the write ran, its reply is lost, and the steps after it fail.
    `on_blackout` runs as each begins."""
    done: list[float] = []

    def on_forward(data: bytes) -> Cut:
        if len(done) < MAX_BLACKOUTS and any(w in data for w in WRITES) and rng.random() < 0.05:
            done.append(rng.uniform(0.5, 2.5))
            loop = asyncio.get_running_loop()
            loop.call_soon(proxy.blackout, done[-1])
            loop.call_soon(on_blackout)
            return Cut.AFTER
        return Cut.KEEP

    return on_forward


async def _half_registered_in_outage(proxy: TcpProxy, redis_url: str) -> list[str] | None:
    """`half_registered` read while the proxy is dark, so no write lands meanwhile
    and the state is what the outage left; None when the outage ended first."""
    await asyncio.sleep(0.2)  # the write forwarded just before the outage runs
    if not proxy.dark:
        return None
    found = await half_registered(redis_url, PREFIX)
    return found if proxy.dark else None


@pytest.mark.timeout(120)
async def test_random_redis_drops_never_duplicate_and_leave_nothing_half_done(
    proxy: TcpProxy, start_server: Any, connect: Connect, redis_url: str
) -> None:
    provider = ScriptedProvider("fake")
    _paced(provider, SESSIONS * PER_SESSION * ROUNDS)
    server = await _server(start_server, proxy, provider)
    rng = random.Random(SEED)
    problems: list[str] = []
    acks: dict[str, list[dict[str, Any]]] = {}  # client_message_id -> every ack
    sent: dict[str, str] = {}  # client_message_id -> its message
    clients = {f"blip-{i}": await connect(server) for i in range(SESSIONS)}

    async def chaos(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            proxy.drop_all()

    async def session(session_id: str, client: RecordingClient) -> None:
        for round_ in range(ROUNDS):
            requests = [
                {
                    "message": f"question {round_}.{n} in {session_id}",
                    "session_id": session_id,
                    "client_message_id": f"{session_id}-{round_}-{n}",
                }
                for n in range(PER_SESSION)
            ]
            results = await asyncio.gather(*(_start(client, r) for r in requests))
            for request, got in zip(requests, results, strict=True):
                acks[request["client_message_id"]] = got
                sent[request["client_message_id"]] = request["message"]
            await asyncio.gather(*(_until_end(client, got) for got in results))

    async def _until_end(client: RecordingClient, got: list[dict[str, Any]]) -> None:
        if got[-1].get("ok"):
            try:
                await client.wait_terminal(got[-1]["stream_id"], within=30)
            except TimeoutError:
                problems.append(
                    f"{got[-1]['stream_id']}: no terminal event in 30 s (acks: {_codes(got)})"
                )

    outage_checks: list[asyncio.Task[list[str] | None]] = []

    def check_in_outage() -> None:
        outage_checks.append(asyncio.create_task(_half_registered_in_outage(proxy, redis_url)))

    stop = asyncio.Event()
    proxy.drop_chance = 0.004
    proxy.on_forward = _blackouts(proxy, rng, check_in_outage)
    chaos_task = asyncio.create_task(chaos(stop))
    try:
        await asyncio.gather(*(session(s, c) for s, c in clients.items()))
    finally:
        stop.set()
        proxy.drop_chance = 0.0
        proxy.on_forward = None
        await chaos_task
        found = await asyncio.gather(*outage_checks)
    checked = [f for f in found if f is not None]
    problems += [f"during an outage: {p}" for f in checked for p in f]
    print(
        f"\nproxy: {proxy.accepted} connections, {proxy.dropped} dropped, "
        f"{len(outage_checks)} outages ({len(checked)} read while dark)"
    )

    runner = server.app[RUNNER]
    assert await poll_until(lambda: not runner.streams, within=15), list(runner.streams)
    accepted: dict[str, dict[str, Any]] = {}
    for cmid, got in acks.items():
        oks = [a for a in got if a.get("ok")]
        if len({a["stream_id"] for a in oks}) > 1:
            problems.append(f"{cmid}: one client_message_id started {len(oks)} streams: {oks}")
        if oks:
            accepted[cmid] = oks[0]
        elif got[-1]["error"]["code"] != "store_unavailable":
            problems.append(f"{cmid}: chat_stream answered {_codes(got)}: {got[-1]}")
    for session_id, client in clients.items():
        messages = await _messages(redis_url, session_id)
        ids = Counter(m["message_id"] for m in messages)
        problems += [f"{m}: stored {n} times" for m, n in ids.items() if n > 1]
        users = Counter(m["content"] for m in messages if m["role"] == "user")
        problems += [f"user message {c!r} stored {n} times" for c, n in users.items() if n > 1]
        for cmid, ack in accepted.items():
            if ack["session_id"] != session_id:
                continue
            stream_id = ack["stream_id"]
            view = seen(client.events, stream_id)
            problems += check_follower(stream_id, view, start=1, must_end=True)
            terminal = view.terminals[0] if view.terminals else None
            problems += check_persisted(stream_id, messages, ack["message_id"], terminal)
            if users[sent[cmid]] != 1:
                problems.append(
                    f"{cmid}: accepted ({ack['stream_id']}), its user message stored "
                    f"{users[sent[cmid]]} times"
                )
    problems += await occupied_slots(redis_url, PREFIX)
    problems += await half_done_streams(redis_url, PREFIX)
    ends = Counter(
        e if e == "chat_complete" else d.get("code")
        for c in clients.values()
        for e, d in c.events
        if e in ("chat_complete", "chat_stream_error")
    )
    retried = sum(len(got) - 1 for got in acks.values())
    print(f"ends {dict(ends)}, {len(accepted)} accepted, {retried} chat_stream retries")
    assert proxy.dropped > 0, "the proxy dropped nothing: the test proved nothing"
    history = {ack["stream_id"]: _codes(acks[cmid]) for cmid, ack in accepted.items()}
    assert_none([_with_acks(p, history) for p in problems])


def _with_acks(problem: str, history: dict[str, str]) -> str:
    """`problem` with the chat_stream answers that led to the stream it names."""
    stream_id = problem.split(":", 1)[0]
    return f"{problem} [chat_stream: {history[stream_id]}]" if stream_id in history else problem


# -- one blip at exactly the wrong moment ---------------------------------------------
def _cut_once(marker: bytes) -> tuple[Callable[[bytes], Cut], list[bytes]]:
    """An `on_forward` that drops the connection right after the first chunk holding
    `marker` reached Redis (so the command runs and its reply is lost)."""
    cut: list[bytes] = []

    def on_forward(data: bytes) -> Cut:
        if not cut and marker in data:
            cut.append(data)
            return Cut.AFTER
        return Cut.KEEP

    return on_forward, cut


@pytest.mark.parametrize("role", ["user", "assistant"])
async def test_a_message_write_whose_reply_is_lost_is_stored_once(
    proxy: TcpProxy, start_server: Any, connect: Connect, redis_url: str, role: str
) -> None:
    """The message write reaches Redis and runs; the connection drops before the
    reply, so the client retries it. The message must still be stored once."""
    provider = ScriptedProvider("fake")
    provider.enqueue("the ", "reply")
    server = await _server(start_server, proxy, provider)
    client = await connect(server)
    proxy.on_forward, cut = _cut_once(f'"role":"{role}"'.encode())
    ack = await client.call("chat_stream", {"message": "hello", "session_id": "blip-once"})
    assert ack["ok"], ack
    event, end = await client.wait_terminal(ack["stream_id"], within=20)
    assert cut, f"no {role} message write went through the proxy"
    assert (event, end["full_response"], end["persist_failed"]) == (
        "chat_complete",
        "the reply",
        False,
    )
    messages = await _messages(redis_url, "blip-once")
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "hello"),
        ("assistant", "the reply"),
    ]


# Commands that only read: cutting after one of them breaks nothing.
_READS = frozenset(
    {b"GET", b"MGET", b"EXISTS", b"HGET", b"SISMEMBER", b"SCARD", b"SMEMBERS", b"ZRANGE"}
)


def _command(data: bytes) -> bytes:
    """The name of the first command in a chunk a client sent (RESP: `*N $len NAME`)."""
    parts = data.split(b"\r\n", 3)
    return parts[2].upper() if data.startswith(b"*") and len(parts) > 3 else b""


# Where a registration is cut: after the first write that touches the session's
# slots, or that carries the stream record.
CUT_AT = {
    "slot": lambda data: b":session:blip-reg:active" in data and _command(data) not in _READS,
    "record": lambda data: b'"owner":"' in data,
}


@pytest.mark.parametrize("cut_at", sorted(CUT_AT))
async def test_a_registration_whose_reply_is_lost_in_an_outage_is_undone(
    proxy: TcpProxy, start_server: Any, connect: Connect, redis_url: str, cut_at: str
) -> None:
    """A registration's write runs, then the store stays away longer than the write
    retry: the start fails without knowing whether it registered. During the outage
    the store holds all of the registration or none of it (never a slot without its
    stream, or a stream without its slot). Once the store is back, a retry with the
    same client_message_id must start a stream that runs, not get the ack of the
    orphan; the orphan must hold no slot."""
    provider = ScriptedProvider("fake")
    provider.enqueue("warm-up")
    provider.enqueue("answered")
    server = await _server(start_server, proxy, provider)
    client = await connect(server)
    # A first stream loads the Lua scripts: the cut below must hit a registration
    # that runs, not an EVALSHA answered NOSCRIPT.
    warm = await client.call("chat_stream", {"message": "warm-up", "session_id": "blip-reg"})
    await client.wait_terminal(warm["stream_id"], within=20)
    cut: list[bytes] = []
    in_outage: list[asyncio.Task[list[str] | None]] = []

    def on_forward(data: bytes) -> Cut:
        if not cut and CUT_AT[cut_at](data):
            cut.append(data)
            loop = asyncio.get_running_loop()
            loop.call_soon(proxy.blackout, 4.0)
            in_outage.append(loop.create_task(_half_registered_in_outage(proxy, redis_url)))
            return Cut.AFTER
        return Cut.KEEP

    proxy.on_forward = on_forward
    body = {"message": "hello", "session_id": "blip-reg", "client_message_id": "once"}
    failed = await client.call("chat_stream", body, within=20)
    assert cut, "no registration went through the proxy"
    assert await in_outage[0] == [], f"the registration was cut after {_command(cut[0])!r}"
    assert failed["error"]["code"] == "store_unavailable"
    await asyncio.sleep(4.5)  # the store answers again
    retry = await client.call("chat_stream", body, within=20)
    assert retry["ok"], retry
    event, end = await client.wait_terminal(retry["stream_id"], within=20)
    assert (event, end["full_response"]) == ("chat_complete", "answered")
    messages = await _messages(redis_url, "blip-reg")
    assert [(m["role"], m["content"]) for m in messages][-2:] == [
        ("user", "hello"),
        ("assistant", "answered"),
    ]
