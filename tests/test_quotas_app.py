"""Quotas through a real app: the attacks of issue 9 that spent the operator's
budget or pushed other users out, each refused, and everyone else unaffected.

In-process app, jwt mode, real python-socketio clients and HTTP; the limits
are counted in the memory store here (tests/test_rate_limits_multiworker.py
runs them across two workers on Redis).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
from aiohttp.test_utils import TestServer

from chatsock.app import RUNNER, STORE
from chatsock.providers.base import Delta, Usage
from tests.conftest import ServerFactory, url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.waiting import poll_until

SECRET = "test-secret-0123456789-0123456789-abcdef"


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600}, SECRET, "HS256")


AUTH = {"mode": "jwt", "jwt_secret": SECRET}


async def as_user(server: TestServer, sub: str, made: list[RecordingClient]) -> RecordingClient:
    client = await RecordingClient().connect(url_of(server), auth={"token": token(sub)})
    made.append(client)
    return client


async def test_the_daily_output_token_budget_is_counted_from_provider_usage(
    start_server: ServerFactory, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, auth=AUTH,
        limits={"daily_output_tokens": 100},
    )  # fmt: skip
    alice = await as_user(server, "alice", clients)
    bob = await as_user(server, "bob", clients)
    fake_provider.enqueue("a long reply", usage=Usage(10, 150))
    ack = await alice.call("chat_stream", {"message": "hi"})
    assert (await alice.wait_terminal(ack["stream_id"]))[0] == "chat_complete"
    refused = await alice.call("chat_stream", {"message": "again"})
    assert refused["ok"] is False
    assert refused["error"]["code"] == "rate_limited"
    assert 1 <= refused["error"]["retry_after"] <= 86400
    assert "limits.daily_output_tokens" in refused["error"]["message"]
    other = await bob.call("chat_stream", {"message": "mine"})  # bob has his own budget
    assert other["ok"], other
    await bob.wait_terminal(other["stream_id"])


async def test_reasoning_counts_against_the_budget_when_the_provider_reports_no_usage(
    start_server: ServerFactory, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, auth=AUTH,
        limits={"daily_output_tokens": 100},
    )  # fmt: skip
    alice = await as_user(server, "alice", clients)
    fake_provider.enqueue(Delta(reasoning="x" * 400), "ok")  # ~101 tokens, 100 of them thought
    ack = await alice.call("chat_stream", {"message": "think"})
    assert (await alice.wait_terminal(ack["stream_id"]))[0] == "chat_complete"
    refused = await alice.call("chat_stream", {"message": "again"})
    assert refused["error"]["code"] == "rate_limited"


async def test_one_user_cannot_start_300_concurrent_streams(
    start_server: ServerFactory, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    """The attack: one socket started 300 provider streams in 0.28 s. Now at most
    `max_streams_per_user` run; the rest are refused, hold no slot and leave no task."""
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, auth=AUTH,
        limits={"stream_starts_per_minute": 0, "socket_events_per_second": 0},
    )  # fmt: skip
    gates = []
    for _ in range(300):
        script = fake_provider.enqueue("x")
        gates.append(script.gate())
    alice = await as_user(server, "alice", clients)
    acks = await asyncio.gather(
        *(alice.call("chat_stream", {"message": f"m{n}"}, within=30) for n in range(300))
    )
    accepted = [a for a in acks if a["ok"]]
    assert len(accepted) == 3
    assert {a["error"]["code"] for a in acks if not a["ok"]} == {"too_many_streams"}
    assert len(fake_provider.requests) == 3
    runner = server.app[RUNNER]
    assert len(runner.streams) == 3
    for gate in gates:
        gate.set()
    for ack in accepted:
        assert (await alice.wait_terminal(ack["stream_id"]))[0] == "chat_complete"
    assert await poll_until(lambda: runner.task_count == 0, within=10)
    assert await server.app[STORE].active_streams(user="alice") == []
    again = await alice.call("chat_stream", {"message": "after"})  # the slots are free
    assert again["ok"], again
    await alice.wait_terminal(again["stream_id"])


async def test_the_31st_start_in_a_minute_is_refused_over_both_transports(
    start_server: ServerFactory, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, auth=AUTH,
        limits={"stream_starts_per_minute": 30},  # the default, named: tests relax it
    )  # fmt: skip
    alice = await as_user(server, "alice", clients)
    for n in range(30):
        ack = await alice.call("chat_stream", {"message": f"m{n}"})
        assert ack["ok"], ack
        await alice.wait_terminal(ack["stream_id"])
    refused = await alice.call("chat_stream", {"message": "one more"})
    assert refused["error"]["code"] == "rate_limited"
    assert refused["error"]["retry_after"] >= 1
    headers = {"Authorization": f"Bearer {token('alice')}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url_of(server)}/api/chat/stream", json={"message": "x"}, headers=headers) as r,
    ):
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "rate_limited"


async def test_an_event_flood_gets_rate_limited_acks_then_a_disconnect(
    start_server: ServerFactory, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    """The attack: 3,000 events in 0.5 s from one socket. A neighbour on the same
    worker keeps being served."""
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, auth=AUTH,
        limits={"socket_events_per_second": 20, "socket_events_burst": 40},  # the defaults
    )  # fmt: skip
    flood = await as_user(server, "mallory", clients)
    calm = await as_user(server, "alice", clients)

    async def one(n: int) -> Any:
        try:
            return await flood.call("chat_stop", {"stream_id": f"st_{n}"}, within=5)
        except Exception as exc:  # the socket was disconnected mid-flood
            return type(exc).__name__

    answers = await asyncio.gather(*(one(n) for n in range(300)))
    codes = [a["error"]["code"] for a in answers if isinstance(a, dict)]
    # The burst (40) plus what refills (20/s) while the flood lasts: far from 300.
    assert codes.count("not_found") < 100
    assert "rate_limited" in codes
    await asyncio.wait_for(flood.disconnected.wait(), 10)
    ack = await calm.call("chat_stream", {"message": "still here"})
    assert ack["ok"], ack
    assert (await calm.wait_terminal(ack["stream_id"]))[0] == "chat_complete"


async def test_many_sessions_of_one_user_never_evict_another_users(
    start_server: ServerFactory, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    """The attack: 10,000 tiny streams from one socket evicted every other user's
    session. Sessions are capped per owner now (store.max_sessions, small here)."""
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, auth=AUTH,
        store={"max_sessions": 5}, limits={"stream_starts_per_minute": 0},
    )  # fmt: skip
    alice = await as_user(server, "alice", clients)
    mine = await alice.call("chat_stream", {"message": "alice's only session"})
    await alice.wait_terminal(mine["stream_id"])
    mallory = await as_user(server, "mallory", clients)
    for n in range(25):
        ack = await mallory.call("chat_stream", {"message": f"spam {n}"})
        assert ack["ok"], ack
        await mallory.wait_terminal(ack["stream_id"])
    joined = await alice.call("session_join", {"session_id": mine["session_id"]})
    assert joined["ok"], joined
    assert joined["messages"][0]["content"] == "alice's only session"
    store = server.app[STORE]
    assert len(await store.list_sessions(owner="mallory")) == 5
