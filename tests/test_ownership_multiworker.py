"""Ownership across two real workers on one Redis, in the jwt mode.

User A streams on worker 1; user B, on worker 2, tries every operation on A's
session and stream over Socket.IO and HTTP. Each answer must be the answer for
an id that does not exist, and A's stream must run to its end untouched: no
token of it reaches B, and A can still resume it from worker 2.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest

from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    check_terminals_agree,
    check_text,
    half_done_streams,
    log_problems,
    merge_tokens,
    occupied_slots,
    seen,
    stream_tasks,
)
from tests.support.process import Worker
from tests.support.redis_server import RedisServer, RedisServerMissing

pytestmark = pytest.mark.redis

SECRET = "multiworker-ownership-secret-0123456789"
PREFIX = "chatsock"  # store.key_prefix's default
MISSING_SESSION = "ses_nosuchsession0000000"
MISSING_STREAM = "st_nosuchstream00000000"


def token(sub: str, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600, **claims}, SECRET, "HS256")


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


@dataclass
class Cluster:
    redis: RedisServer
    workers: tuple[Worker, Worker]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two workers on a redis-server of their own, shared by this module's tests
    (every test uses its own users, so nothing carries over)."""
    try:
        redis = RedisServer().start()
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    env = {
        "REDIS_URL": redis.url,
        "CHATSOCK_AUTH__MODE": "jwt",
        "CHATSOCK_JWT_SECRET": SECRET,
        "CHATSOCK_AUTH__ADMIN_CLAIM": "role=admin",
        # ~100 pieces at 12 a second: streams run ~8 s, while the probes take ~1 s.
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "12",
    }
    workers = (
        Worker(env={**env, "CHATSOCK_SERVER__WORKER_ID": "worker-1"}),
        Worker(env={**env, "CHATSOCK_SERVER__WORKER_ID": "worker-2"}),
    )
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Worker.start, workers))
        yield Cluster(redis, workers)
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Worker.stop, workers))
        redis.close()


async def as_user(worker: Worker, sub: str, made: list[RecordingClient]) -> RecordingClient:
    client = await RecordingClient().connect(worker.url, auth={"token": token(sub)})
    made.append(client)
    return client


async def socketio_probes(
    prober: RecordingClient, session_id: str, stream_id: str, *, compare: bool = True
) -> list[str]:
    """Every Socket.IO operation on another user's session and stream; the problems.
    With `compare`, each answer must also equal the answer for a missing id."""
    problems = []
    for event, real, missing_id, key in [
        ("session_join", session_id, MISSING_SESSION, "session_id"),
        ("chat_resume", stream_id, MISSING_STREAM, "stream_id"),
        ("chat_stop", stream_id, MISSING_STREAM, "stream_id"),
    ]:
        answer = await prober.call(event, {key: real})
        if not (isinstance(answer, dict) and answer.get("error", {}).get("code") == "not_found"):
            problems.append(f"{event} of another user's {key}: {answer}")
        elif compare:
            missing = await prober.call(event, {key: missing_id})
            if str(answer).replace(real, missing_id) != str(missing):
                problems.append(f"{event}: {answer} differs from a missing id's {missing}")
    into = await prober.call("chat_stream", {"message": "written in", "session_id": session_id})
    if not (isinstance(into, dict) and into.get("error", {}).get("code") == "not_found"):
        # Its owner would get too_many_streams while it runs: that would tell the
        # prober the session exists.
        problems.append(f"chat_stream into another user's session: {into}")
    return problems


async def http_probes(
    http: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    session_id: str,
    stream_id: str,
    *,
    compare: bool = True,
) -> list[str]:
    """Every HTTP operation on another user's session and stream; the problems.
    With `compare`, each answer must also equal the answer for a missing id."""

    async def answer(method: str, path: str, body: Any = None) -> tuple[int, str]:
        async with http.request(method, f"{base}{path}", headers=headers, json=body) as reply:
            return reply.status, await reply.text()

    problems = []
    for method, path, body, real, missing_id in [
        ("GET", f"/api/chat/stream/{stream_id}", None, stream_id, MISSING_STREAM),
        ("POST", "/api/chat/stream/stop", {"stream_id": stream_id}, stream_id, MISSING_STREAM),
        ("GET", f"/api/chat/sessions/{session_id}", None, session_id, MISSING_SESSION),
        ("DELETE", f"/api/chat/sessions/{session_id}", None, session_id, MISSING_SESSION),
    ]:
        got = await answer(method, path, body)
        if got[0] != 404:
            problems.append(f"{method} {path}: {got}")
        elif compare:
            missing_body = {"stream_id": missing_id} if body else None
            missing = await answer(method, path.replace(real, missing_id), missing_body)
            if (got[0], got[1].replace(real, missing_id)) != missing:
                problems.append(f"{method} {path}: {got} differs from a missing id's {missing}")
    into = {"message": "written in", "session_id": session_id}
    status, text = await answer("POST", "/api/chat/stream", into)
    if status != 404 or "not_found" not in text:
        problems.append(f"POST /api/chat/stream into another user's session: {status} {text}")
    return problems


async def listing_problems(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str], foreign: list[str]
) -> list[str]:
    """The caller's lists show none of the `foreign` (other users') ids."""
    problems = []
    paths = [
        "/api/chat/sessions",
        "/api/chat/sessions?all=1",  # not an admin: still only its own
        "/api/chat/stream/active",
        "/api/chat/stream/active?all=1",
    ]
    paths += [f"/api/chat/stream/active?session_id={i}" for i in foreign if i.startswith("ses")]
    for path in paths:
        async with http.get(f"{base}{path}", headers=headers) as reply:
            status, text = reply.status, await reply.text()
        shown = [i for i in foreign if i in text]
        if status != 200 or shown:
            problems.append(f"GET {path}: {status}, shows another user's {shown}")
    return problems


async def store_problems(cluster: Cluster, http: aiohttp.ClientSession) -> list[str]:
    """Nothing left running or half-done, in Redis or in either worker."""
    problems = await occupied_slots(cluster.redis.url, PREFIX)
    problems += await half_done_streams(cluster.redis.url, PREFIX)
    for worker in cluster.workers:
        tasks = await stream_tasks(http, worker.url)
        if tasks:
            problems.append(f"{worker.url}: chatsock_stream_tasks is {tasks} after every end")
    return problems


async def wait_settled(cluster: Cluster, http: aiohttp.ClientSession) -> list[str]:
    """`store_problems` once it is empty, or after 10 s (an end's bookkeeping
    can trail its terminal event by a few milliseconds)."""
    deadline = time.monotonic() + 10
    while True:
        problems = await store_problems(cluster, http)
        if not problems or time.monotonic() > deadline:
            return problems
        await asyncio.sleep(0.1)


def worker_logs(cluster: Cluster) -> list[str]:
    return [p for w in cluster.workers for p in log_problems(w.url, w.log())]


async def test_another_users_stream_on_another_worker_is_not_found_and_untouched(
    cluster: Cluster, http: aiohttp.ClientSession, clients: list[RecordingClient]
) -> None:
    one, two = cluster.workers
    alice = await as_user(one, "alice", clients)
    bob = await as_user(two, "bob", clients)
    ack = await alice.call("chat_stream", {"message": "alice's private question"})
    assert ack["ok"], ack
    session_id, stream_id = ack["session_id"], ack["stream_id"]
    await alice.wait_event("chat_token", stream_id)

    problems = await socketio_probes(bob, session_id, stream_id)
    problems += await http_probes(http, two.url, bearer("bob"), session_id, stream_id)
    problems += await listing_problems(http, two.url, bearer("bob"), [session_id, stream_id])
    assert_none(problems)
    # Every probe was answered while the stream still ran (a stop would have ended it).
    assert not alice.of("chat_complete", stream_id), "the stream ended before the probes did"

    # Alice, on the other worker, follows the same stream from its start.
    alice_two = await as_user(two, "alice", clients)
    resumed = await alice_two.call("chat_resume", {"stream_id": stream_id, "after": 0})
    assert resumed["ok"], resumed
    for client in (alice, alice_two):
        await client.wait_terminal(stream_id, within=30)
    views = {"alice@1": seen(alice.events, stream_id), "alice@2": seen(alice_two.events, stream_id)}
    tokens, problems = merge_tokens(stream_id, views.values())
    for label, view in views.items():
        problems += check_follower(label, view, start=1, must_end=True, tokens=tokens)
    terminals = [view.terminals[0] for view in views.values()]
    problems += check_terminals_agree(stream_id, terminals)
    problems += check_text(stream_id, terminals[0], tokens)
    event, end = terminals[0]
    assert (event, end.get("stopped")) == ("chat_complete", False), (event, end)

    async with http.get(
        f"{two.url}/api/chat/sessions/{session_id}", headers=bearer("alice")
    ) as reply:
        assert reply.status == 200
        view = await reply.json()
    problems += check_persisted(stream_id, view["messages"], ack["message_id"], terminals[0])
    assert view["messages"][0]["content"] == "alice's private question"
    async with http.get(f"{two.url}/api/chat/sessions", headers=bearer("alice")) as reply:
        assert session_id in await reply.text()
    async with http.get(
        f"{two.url}/api/chat/sessions?all=1", headers=bearer("root", role="admin")
    ) as reply:
        assert session_id in await reply.text()  # an operator sees everyone's

    assert bob.events == [], "bob received events of alice's stream"
    problems += await wait_settled(cluster, http)
    problems += worker_logs(cluster)
    assert_none(problems)


async def test_eight_users_across_two_workers_each_reach_only_their_own(
    cluster: Cluster, http: aiohttp.ClientSession, clients: list[RecordingClient]
) -> None:
    """Eight users stream at once, alternating workers; each probes every other
    user's session and stream from its socket, and over HTTP on the other worker."""
    users = [f"user{n}" for n in range(8)]
    workers = cluster.workers
    socks = await asyncio.gather(
        *(as_user(workers[n % 2], user, clients) for n, user in enumerate(users))
    )
    acks = await asyncio.gather(
        *(
            s.call("chat_stream", {"message": f"question of {u}"})
            for s, u in zip(socks, users, strict=True)
        )
    )
    assert all(a["ok"] for a in acks), acks
    await asyncio.gather(
        *(s.wait_event("chat_token", a["stream_id"]) for s, a in zip(socks, acks, strict=True))
    )

    async def probe(n: int) -> list[str]:
        other_worker = workers[(n + 1) % 2].url
        found = []
        for m, other in enumerate(acks):
            if m != n:
                session_id, stream_id = other["session_id"], other["stream_id"]
                found += [f"{users[n]} on {users[m]}'s: {p}" for p in [
                    *await socketio_probes(socks[n], session_id, stream_id, compare=False),
                    *await http_probes(http, other_worker, bearer(users[n]), session_id,
                                       stream_id, compare=False),
                ]]  # fmt: skip
        foreign = [a[key] for a in acks if a is not acks[n] for key in ("session_id", "stream_id")]
        found += await listing_problems(http, other_worker, bearer(users[n]), foreign)
        return found

    problems = [p for found in await asyncio.gather(*map(probe, range(8))) for p in found]
    running = [
        users[n] for n, a in enumerate(acks) if not socks[n].of("chat_complete", a["stream_id"])
    ]
    assert running == users, "some streams ended before the probes did"

    ends = await asyncio.gather(
        *(s.wait_terminal(a["stream_id"], within=30) for s, a in zip(socks, acks, strict=True))
    )
    for n, (sock, ack, (event, end)) in enumerate(zip(socks, acks, ends, strict=True)):
        stream_id = ack["stream_id"]
        if (event, end.get("stopped")) != ("chat_complete", False):
            problems.append(f"{users[n]}'s stream ended {event} {end}")
        view = seen(sock.events, stream_id)
        tokens, merged = merge_tokens(stream_id, [view])
        problems += merged + check_follower(users[n], view, start=1, must_end=True, tokens=tokens)
        others = {d.get("stream_id") for _, d in sock.events if isinstance(d, dict)} - {stream_id}
        if others:
            problems.append(f"{users[n]} received events of streams {others}")
        async with http.get(
            f"{workers[(n + 1) % 2].url}/api/chat/sessions", headers=bearer(users[n])
        ) as reply:
            listed = [s["session_id"] for s in (await reply.json())["sessions"]]
        if listed != [ack["session_id"]]:
            problems.append(f"{users[n]} lists sessions {listed}, not only its own")
        joined = await sock.call("session_join", {"session_id": ack["session_id"]})
        problems += check_persisted(users[n], joined["messages"], ack["message_id"], (event, end))
    problems += await wait_settled(cluster, http)
    problems += worker_logs(cluster)
    assert_none(problems)


async def test_a_users_fourth_concurrent_stream_is_refused_on_either_worker(
    cluster: Cluster, http: aiohttp.ClientSession, clients: list[RecordingClient]
) -> None:
    """limits.max_streams_per_user (3 by default) counts a user's streams on every
    worker: each in a session of its own, so the per-session limit never bites."""
    one, two = cluster.workers
    socks = [await as_user(one, "carol", clients), await as_user(two, "carol", clients)]
    acks = [await socks[n % 2].call("chat_stream", {"message": f"carol {n}"}) for n in range(3)]
    assert all(a["ok"] for a in acks), acks
    for sock in socks:
        fourth = await sock.call("chat_stream", {"message": "a fourth"})
        assert fourth["error"]["code"] == "too_many_streams", fourth
        assert "limits.max_streams_per_user" in fourth["error"]["message"]
    for worker in cluster.workers:
        async with http.post(
            f"{worker.url}/api/chat/stream", json={"message": "a fourth"}, headers=bearer("carol")
        ) as reply:
            body = await reply.json()
            assert (reply.status, body["error"]["code"]) == (429, "too_many_streams"), body
    # Someone else is not held back by carol's streams.
    dave = await as_user(two, "dave", clients)
    ack = await dave.call("chat_stream", {"message": "dave's"})
    assert ack["ok"], ack
    acks.append(ack)

    # One of carol's ends (stopped from the other worker): she may start again.
    first = acks[0]["stream_id"]
    assert await socks[1].call("chat_stop", {"stream_id": first}) == {"ok": True, "stopped": True}
    await socks[0].wait_terminal(first)
    again = await socks[1].call("chat_stream", {"message": "carol again"})
    assert again["ok"], again
    acks.append(again)
    everyone = {0: socks[0], 1: socks[1], 2: socks[0], 3: dave, 4: socks[1]}
    for n, ack in enumerate(acks):
        await everyone[n].call("chat_stop", {"stream_id": ack["stream_id"]})
    for n, ack in enumerate(acks):
        event, end = await everyone[n].wait_terminal(ack["stream_id"])
        assert event == "chat_complete", (event, end)
    problems = await wait_settled(cluster, http)
    problems += worker_logs(cluster)
    assert_none(problems)
