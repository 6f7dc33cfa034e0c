"""Regenerate across two real workers on one real redis-server: a regenerate runs on
one worker and is followed, resumed, retried and stopped from the other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.clients import RecordingClient, connected
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    half_done_streams,
    merge_tokens,
    occupied_slots,
    seen,
)
from tests.support.process import Worker, worker_pair
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
async def cluster(private_redis_server: RedisServer) -> AsyncIterator[tuple[Worker, Worker]]:
    async with worker_pair(
        private_redis_server.url,
        CHATSOCK_DEMO_TOKENS_PER_SECOND="80",
        CHATSOCK_STREAM__LEASE_S="3",
    ) as workers:
        yield workers


async def _client(clients: list[RecordingClient], worker: Worker) -> RecordingClient:
    return await connected(clients, worker.url)


async def _messages(client: RecordingClient) -> list[dict[str, Any]]:
    join = await client.call("session_join", {"session_id": "s1"})
    assert join["ok"], join
    return list(join["messages"])


async def test_a_regenerate_on_one_worker_is_resumed_retried_and_stopped_from_the_other(
    cluster: tuple[Worker, Worker],
    clients: list[RecordingClient],
    private_redis_server: RedisServer,
) -> None:
    a, b = cluster
    on_a, on_b = await _client(clients, a), await _client(clients, b)
    first = await on_a.call("chat_stream", {"message": "tell me", "session_id": "s1"})
    assert first["ok"], first
    _, original = await on_a.wait_terminal(first["stream_id"], within=30)
    message_id = first["message_id"]

    # 1. Regenerated on A; B reloads mid-reply, resumes from 0 and retries the request.
    body = {"session_id": "s1", "message_id": message_id, "client_message_id": "again-1"}
    regen = await on_a.call("chat_regenerate", body)
    assert regen["ok"], regen
    assert regen["regenerates"] == message_id
    await on_a.wait_for(lambda _: len(on_a.tokens(regen["stream_id"])) >= 3, within=20)
    join = await on_b.call("session_join", {"session_id": "s1"})
    assert [m["content"] for m in join["messages"]][-1] == original["full_response"]
    assert join["active_stream"]["stream_id"] == regen["stream_id"]
    resumed = await on_b.call(
        "chat_resume", {"stream_id": regen["stream_id"], "after": 0, "epoch": regen["epoch"]}
    )
    assert resumed["ok"], resumed
    assert await on_b.call("chat_regenerate", body) == regen  # idempotent across workers
    problems: list[str] = []
    ends = []
    for client in (on_a, on_b):
        ends.append(await client.wait_terminal(regen["stream_id"], within=30))
    views = {label: seen(c.events, regen["stream_id"]) for label, c in (("A", on_a), ("B", on_b))}
    merged, clashes = merge_tokens("regenerate", views.values())
    problems += clashes
    for label, view in views.items():
        problems += check_follower(label, view, start=1, must_end=True, tokens=merged)
    assert ends[0] == ends[1]
    event, end = ends[0]
    assert (event, end["regenerates"], end["message_id"]) == (
        "chat_complete",
        message_id,
        message_id,
    )
    messages = await _messages(on_b)
    problems += check_persisted("regenerate", messages, message_id, ends[0])
    assert_none(problems)
    assert [v["stream_id"] for v in messages[-1]["versions"]] == [first["stream_id"]]

    # 2. Regenerated on B, stopped from A: the partial replaces it, both earlier kept.
    second = await on_b.call("chat_regenerate", {"session_id": "s1"})
    assert second["ok"], second
    await on_a.wait_for(lambda _: len(on_a.tokens(second["stream_id"])) >= 2, within=20)
    stop = await on_a.call("chat_stop", {"stream_id": second["stream_id"]}, within=20)
    assert stop == {"ok": True, "stopped": True}
    event, end = await on_b.wait_terminal(second["stream_id"], within=30)
    assert (event, end["stopped"]) == ("chat_complete", True)
    reply = (await _messages(on_a))[-1]
    assert (reply["message_id"], reply["status"], reply["content"]) == (
        message_id,
        "stopped",
        end["full_response"],
    )
    assert [v["stream_id"] for v in reply["versions"]] == [
        first["stream_id"],
        regen["stream_id"],
    ]
    prefix = "chatsock"
    assert await occupied_slots(private_redis_server.url, prefix) == []
    assert await half_done_streams(private_redis_server.url, prefix) == []
