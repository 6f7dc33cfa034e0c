"""Rate limits across two real workers on one Redis, in the jwt mode: stream
starts per user and per client IP (the 31st `chat_stream` of a minute is refused
whichever worker receives it, over Socket.IO and HTTP), connections per IP,
and one socket's event flood.

The workers trust 127.0.0.1 as a proxy, so each test client names its own
address in `X-Forwarded-For` and the per-user and per-IP limits can be told
apart. The demo provider finishes at once and `max_streams_per_user` is high,
so only the limit under test bites.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import jwt
import pytest
import socketio

from tests.support.clients import RecordingClient
from tests.support.invariants import assert_none, log_problems
from tests.support.process import Worker
from tests.support.redis_server import RedisServer, RedisServerMissing

pytestmark = pytest.mark.redis

SECRET = "limits-test-secret-0123456789-0123456789"
STARTS_PER_MINUTE = 30  # the default, named
CONNECTIONS_PER_IP = 5
EVENTS_PER_SECOND, EVENTS_BURST = 20, 40  # the defaults, named
# A bucket of 30 a minute gives one start back every 2 s after its first.
REFILL_S = 60 / STARTS_PER_MINUTE

Answer = tuple[str, dict[str, Any]]  # ("ok" | code, details)


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600}, SECRET, "HS256")


def from_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[Worker, Worker]]:
    """Two workers on a redis-server of their own, shared by this module's tests
    (each test uses its own users and addresses, so no count carries over)."""
    try:
        redis = RedisServer().start()
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    env = {
        "REDIS_URL": redis.url,
        "CHATSOCK_AUTH__MODE": "jwt",
        "CHATSOCK_JWT_SECRET": SECRET,
        "CHATSOCK_SERVER__TRUSTED_PROXIES": '["127.0.0.1"]',
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "100000",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "100",
        "CHATSOCK_LIMITS__STREAM_STARTS_PER_MINUTE": str(STARTS_PER_MINUTE),
        "CHATSOCK_LIMITS__CONNECTIONS_PER_IP": str(CONNECTIONS_PER_IP),
        "CHATSOCK_LIMITS__SOCKET_EVENTS_PER_SECOND": str(EVENTS_PER_SECOND),
        "CHATSOCK_LIMITS__SOCKET_EVENTS_BURST": str(EVENTS_BURST),
    }
    pair = (Worker(env=env), Worker(env=env))
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Worker.start, pair))
        yield pair
        assert_none([p for w in pair for p in log_problems(w.url, w.log())])
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Worker.stop, pair))
        redis.close()


async def connect(
    made: list[RecordingClient], worker: Worker, sub: str, ip: str
) -> RecordingClient:
    client = RecordingClient()
    made.append(client)  # closed by the fixture, refused or not
    return await client.connect(worker.url, auth={"token": token(sub)}, headers=from_ip(ip))


def over_socketio(client: RecordingClient) -> Callable[[], Awaitable[Answer]]:
    async def start() -> Answer:
        ack = await client.call("chat_stream", {"message": "one more"})
        if ack["ok"]:
            return "ok", ack
        error = ack["error"]
        return error["code"], {"retry_after": error.get("retry_after"), "message": error}

    return start


def over_http(
    http: aiohttp.ClientSession, worker: Worker, sub: str, ip: str
) -> Callable[[], Awaitable[Answer]]:
    async def start() -> Answer:
        headers = {"Authorization": f"Bearer {token(sub)}", **from_ip(ip)}
        async with http.post(
            f"{worker.url}/api/chat/stream", json={"message": "one more"}, headers=headers
        ) as reply:
            body = await reply.json()
            if reply.status == 200:
                return "ok", body
            return body["error"]["code"], {
                "status": reply.status,
                "Retry-After": reply.headers.get("Retry-After"),
                "retry_after": body["error"].get("retry_after"),
                "message": body,
            }

    return start


async def refusals(
    attempts: dict[str, Callable[[], Awaitable[Answer]]], since: float
) -> dict[str, Answer]:
    """Each attempt's first refusal.

    The bucket gives a start back every REFILL_S after its first start, so an
    attempt may be accepted when the machine is slow: no more of them than that
    (`since` is the client's time before the first start: never short)."""
    refused: dict[str, Answer] = {}
    accepted = 0
    for name, attempt in attempts.items():
        while True:
            code, details = await attempt()
            if code != "ok":
                refused[name] = (code, details)
                break
            accepted += 1
            allowance = math.floor((time.monotonic() - since) / REFILL_S)
            assert accepted <= allowance, f"{name}: start {accepted} over the limit accepted"
    return refused


def check_refused(refused: dict[str, Answer]) -> list[str]:
    """Every refusal is `rate_limited` with a whole-seconds retry_after within the
    minute; over HTTP a 429 whose Retry-After says the same."""
    problems = []
    for name, (code, details) in refused.items():
        retry = details.get("retry_after")
        if code != "rate_limited" or not (isinstance(retry, int) and 1 <= retry <= 60):
            problems.append(f"{name}: refused with {code}, retry_after {retry!r}: {details}")
        if "status" in details and (
            details["status"] != 429 or details["Retry-After"] != str(retry)
        ):
            problems.append(f"{name}: HTTP {details['status']}, Retry-After "
                            f"{details['Retry-After']!r}, body retry_after {retry!r}")  # fmt: skip
    return problems


async def test_the_31st_start_of_a_user_is_refused_on_whichever_worker(
    workers: tuple[Worker, Worker], http: aiohttp.ClientSession, clients: list[RecordingClient]
) -> None:
    # One socket per worker, each from its own address: neither address reaches
    # its own limit, so a refusal is the user's.
    sockets = [
        await connect(clients, worker, "alice", f"198.51.100.{n + 1}")
        for n, worker in enumerate(workers)
    ]
    since = time.monotonic()
    acks = await asyncio.gather(
        *(
            sockets[n % 2].call("chat_stream", {"message": f"start {n}"})
            for n in range(STARTS_PER_MINUTE)
        )
    )
    assert [a["ok"] for a in acks] == [True] * STARTS_PER_MINUTE, acks
    refused = await refusals(
        {
            "socket.io on worker 1": over_socketio(sockets[0]),
            "socket.io on worker 2": over_socketio(sockets[1]),
            "http on worker 1": over_http(http, workers[0], "alice", "198.51.100.3"),
            "http on worker 2": over_http(http, workers[1], "alice", "198.51.100.4"),
        },
        since,
    )
    assert_none(check_refused(refused))
    for socket, ack in zip(sockets * STARTS_PER_MINUTE, acks, strict=False):
        assert (await socket.wait_terminal(ack["stream_id"]))[0] == "chat_complete"
    # Another user is not held back by alice's count, on either worker.
    for worker in workers:
        code, details = await over_http(http, worker, "bob", "198.51.100.5")()
        assert code == "ok", details


async def test_the_31st_start_from_one_address_is_refused_across_users_and_workers(
    workers: tuple[Worker, Worker], http: aiohttp.ClientSession, clients: list[RecordingClient]
) -> None:
    office = "203.0.113.7"
    since = time.monotonic()
    answers = await asyncio.gather(
        *(over_http(http, workers[n % 2], f"colleague{n}", office)() for n in range(30))
    )
    assert [code for code, _ in answers] == ["ok"] * STARTS_PER_MINUTE, answers
    # A new user from the same address, on either worker and either transport.
    sockets = [await connect(clients, worker, "newcomer", office) for worker in workers]
    refused = await refusals(
        {
            "socket.io on worker 1": over_socketio(sockets[0]),
            "socket.io on worker 2": over_socketio(sockets[1]),
            "http on worker 1": over_http(http, workers[0], "newcomer", office),
            "http on worker 2": over_http(http, workers[1], "newcomer", office),
        },
        since,
    )
    assert_none(check_refused(refused))
    # The newcomer from another address: its own count is untouched.
    code, details = await over_http(http, workers[1], "newcomer", "203.0.113.8")()
    assert code == "ok", details


async def test_connections_per_ip_are_counted_across_workers(
    workers: tuple[Worker, Worker], clients: list[RecordingClient]
) -> None:
    crowd = "192.0.2.20"
    for n in range(CONNECTIONS_PER_IP):
        await connect(clients, workers[n % 2], f"user{n}", crowd)
    for worker in workers:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await connect(clients, worker, "late", crowd)
        [error] = clients[-1].connect_errors
        assert error["data"] == {"code": "rate_limited"}, error
    # Another address is not held back by the full one.
    await connect(clients, workers[0], "late", "192.0.2.21")

    await clients.pop(0).close()  # one of the crowd leaves (it was on worker 1)
    # The worker frees the hold once it has seen the disconnect: a few tries at most.
    async with asyncio.timeout(10):
        while True:
            try:
                await connect(clients, workers[1], "late", crowd)
                break
            except socketio.exceptions.ConnectionError:
                await asyncio.sleep(0.1)


async def test_a_flooding_socket_is_refused_then_disconnected_and_its_neighbour_is_not(
    workers: tuple[Worker, Worker], clients: list[RecordingClient]
) -> None:
    worker = workers[0]
    calm = await connect(clients, worker, "calm", "192.0.2.30")
    flooder = await connect(clients, worker, "flooder", "192.0.2.31")
    acks: list[dict[str, Any]] = []

    async def flood() -> int:
        """Emit 10x the burst without waiting for answers; the number sent."""
        for sent in range(EVENTS_BURST * 10):
            try:
                await flooder.sio.emit(
                    "chat_stop", {"stream_id": "st_nosuch"}, callback=acks.append
                )
            except socketio.exceptions.BadNamespaceError:  # disconnected meanwhile
                return sent
        return EVENTS_BURST * 10

    async def behave() -> list[tuple[str, dict[str, Any]]]:
        """A stream every half second, each answered and completed."""
        ends = []
        for n in range(4):
            ack = await calm.call("chat_stream", {"message": f"calm {n}"})
            assert ack["ok"], ack
            ends.append(await calm.wait_terminal(ack["stream_id"]))
            await asyncio.sleep(0.5)
        return ends

    since = time.monotonic()
    sent, ends = await asyncio.gather(flood(), behave())
    await asyncio.wait_for(flooder.disconnected.wait(), 10)
    elapsed = time.monotonic() - since

    codes = [ack["error"]["code"] for ack in acks]
    assert codes[0] == "not_found", codes[:5]  # the first are handled
    limited = [ack["error"] for ack in acks if ack["error"]["code"] == "rate_limited"]
    assert limited, f"{sent} events sent, none refused: {codes}"
    assert all(e["retry_after"] >= 1 for e in limited), limited
    assert set(codes) <= {"not_found", "rate_limited"}, set(codes)
    # Handled: at most the burst and what the rate refilled while it lasted.
    handled = codes.count("not_found")
    assert handled <= EVENTS_BURST + EVENTS_PER_SECOND * elapsed, (handled, elapsed)

    assert [event for event, _ in ends] == ["chat_complete"] * 4
    assert calm.sio.connected
    assert not calm.disconnected.is_set()
    answer = await calm.call("chat_stop", {"stream_id": "st_nosuch"})
    assert answer["error"]["code"] == "not_found"


async def test_engineio_connections_that_never_connect_a_namespace_are_limited_too(
    workers: tuple[Worker, Worker], http: aiohttp.ClientSession
) -> None:
    """A client that opens the transport and answers pings, but never authenticates,
    holds a connection all the same: past the limit it is refused or, at the
    latest within 12 s, closed."""
    crowd = "192.0.2.40"
    open_now: set[int] = set()

    async def hold(n: int) -> None:
        url = workers[n % 2].url.replace("http", "ws", 1)
        with contextlib.suppress(aiohttp.ClientError):
            async with http.ws_connect(
                f"{url}/socket.io/?EIO=4&transport=websocket", headers=from_ip(crowd)
            ) as ws:
                open_now.add(n)
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT and message.data == "2":
                        await ws.send_str("3")  # Engine.IO's pong
        open_now.discard(n)

    tasks = [asyncio.create_task(hold(n)) for n in range(CONNECTIONS_PER_IP * 4)]
    try:
        await asyncio.sleep(0.5)  # every one has had its handshake answered
        for _ in range(60):  # 12 s
            if len(open_now) <= CONNECTIONS_PER_IP:
                break
            await asyncio.sleep(0.2)
        assert len(open_now) <= CONNECTIONS_PER_IP, f"{len(open_now)} connections from {crowd}"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
