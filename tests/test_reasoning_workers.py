"""Reasoning across two real workers on one real redis-server: a second tab and a
reload on the other worker, opted in or not, resume mid-reasoning and a stop
from the other worker, many streams at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.clients import RecordingClient, connected
from tests.support.invariants import assert_none, check_follower, seen, worker_problems
from tests.support.process import Worker, worker_pair
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
async def pair(private_redis_server: RedisServer) -> AsyncIterator[tuple[Worker, Worker]]:
    async with worker_pair(
        private_redis_server.url,
        CHATSOCK_DEMO__TOKENS_PER_SECOND="40",
        CHATSOCK_PROVIDERS__DEMO__KIND="demo",
        CHATSOCK_PROVIDERS__DEMO__THINKING_BUDGET="1024",  # the demo reasons first
    ) as workers:
        yield workers


async def _client(clients: list[RecordingClient], worker: Worker) -> RecordingClient:
    return await connected(clients, worker.url)


def _reasoning(client: RecordingClient, stream_id: str) -> list[dict[str, Any]]:
    """Its reasoning events by seq: a resume after session_join backfills what came
    before the join while live ones flow, so a client orders by seq (as for tokens)."""
    return sorted(client.of("chat_reasoning", stream_id), key=lambda e: e["seq"])


def _check(label: str, client: RecordingClient, stream_id: str, done: dict[str, Any]) -> list[str]:
    view = seen(client.events, stream_id)
    problems = check_follower(label, view, start=1, must_end=True)
    if "".join(t["token"] for t in view.tokens) != done["full_response"]:
        problems.append(f"{label}: its tokens do not spell the reply")
    return problems


def _check_reasoning(label: str, got: list[dict[str, Any]], first: int = 1) -> list[str]:
    seqs = [e["seq"] for e in got]
    if seqs != list(range(first, first + len(got))):
        return [f"{label}: reasoning seqs {seqs}"]
    return []


async def test_reasoning_follows_and_resumes_on_the_other_worker(
    pair: tuple[Worker, Worker], clients: list[RecordingClient]
) -> None:
    a, b = pair
    owner = await _client(clients, a)
    opted, plain, reload = [await _client(clients, b) for _ in range(3)]
    ack = await owner.call("chat_stream", {"message": "think across workers", "reasoning": True})
    stream_id, session_id = ack["stream_id"], ack["session_id"]
    joined = await opted.call("session_join", {"session_id": session_id, "reasoning": True})
    assert joined["ok"], joined
    await opted.call("chat_resume", {"stream_id": stream_id, "reasoning": True})
    await plain.call("session_join", {"session_id": session_id})
    await plain.call("chat_resume", {"stream_id": stream_id})
    await owner.wait_for(lambda _: len(_reasoning(owner, stream_id)) >= 3, within=20)
    # A reload on the other worker that had two reasoning flushes.
    have = _reasoning(owner, stream_id)[:2]
    reply = await reload.call(
        "chat_resume",
        {"stream_id": stream_id, "reasoning": True, "after_reasoning": 2, "epoch": ack["epoch"]},
    )
    assert reply["ok"], reply
    _, done = await owner.wait_terminal(stream_id, within=30)
    for client in (opted, plain, reload):
        await client.wait_terminal(stream_id, within=30)
    full = "".join(e["reasoning"] for e in _reasoning(owner, stream_id))
    assert done["reasoning_chars"] == len(full)
    problems: list[str] = []
    for label, client in (("owner", owner), ("opted", opted), ("plain", plain)):
        problems += _check(label, client, stream_id, done)
    problems += _check("reload", reload, stream_id, done)
    problems += _check_reasoning("owner", _reasoning(owner, stream_id))
    problems += _check_reasoning("opted", _reasoning(opted, stream_id))
    problems += _check_reasoning("reload", _reasoning(reload, stream_id), first=3)
    assert_none(problems)
    assert "".join(e["reasoning"] for e in _reasoning(opted, stream_id)) == full
    tail = "".join(e["reasoning"] for e in _reasoning(reload, stream_id))
    assert "".join(e["reasoning"] for e in have) + tail == full
    assert _reasoning(plain, stream_id) == []
    stored = await plain.call("session_join", {"session_id": session_id, "reasoning": True})
    assert stored["messages"][-1]["reasoning"] == full


async def test_stop_from_the_other_worker_during_reasoning(
    pair: tuple[Worker, Worker], clients: list[RecordingClient]
) -> None:
    a, b = pair
    owner, stopper = await _client(clients, a), await _client(clients, b)
    ack = await owner.call("chat_stream", {"message": "stop my thinking", "reasoning": True})
    stream_id = ack["stream_id"]
    await owner.wait_for(lambda _: _reasoning(owner, stream_id), within=20)
    assert (await stopper.call("chat_stop", {"stream_id": stream_id}))["stopped"] is True
    event, done = await owner.wait_terminal(stream_id, within=20)
    sent = "".join(e["reasoning"] for e in _reasoning(owner, stream_id))
    assert (event, done["stopped"]) == ("chat_complete", True)
    assert done["reasoning_chars"] == len(sent)
    joined = await stopper.call(
        "session_join", {"session_id": ack["session_id"], "reasoning": True}
    )
    reply = joined["messages"][-1]
    assert (reply["status"], reply["reasoning"]) == ("stopped", sent)
    assert reply["content"] == done["full_response"]


async def test_many_reasoning_streams_across_workers(
    pair: tuple[Worker, Worker], clients: list[RecordingClient]
) -> None:
    a, b = pair
    count = 8
    owners = [await _client(clients, a if n % 2 else b) for n in range(count)]
    tabs = [await _client(clients, b if n % 2 else a) for n in range(count)]
    plains = [await _client(clients, b if n % 2 else a) for n in range(count)]
    acks = await asyncio.gather(
        *(
            o.call("chat_stream", {"message": f"s{n}", "reasoning": True})
            for n, o in enumerate(owners)
        )
    )

    async def follow(n: int) -> None:
        ack = acks[n]
        await asyncio.sleep(0.05 * n)
        await tabs[n].call("session_join", {"session_id": ack["session_id"], "reasoning": True})
        await tabs[n].call("chat_resume", {"stream_id": ack["stream_id"], "reasoning": True})
        await plains[n].call("chat_resume", {"stream_id": ack["stream_id"]})

    await asyncio.gather(*(follow(n) for n in range(count)))
    problems: list[str] = []
    for n, ack in enumerate(acks):
        stream_id = ack["stream_id"]
        _, done = await owners[n].wait_terminal(stream_id, within=60)
        full = "".join(e["reasoning"] for e in _reasoning(owners[n], stream_id))
        for label, client in (("owner", owners[n]), ("tab", tabs[n]), ("plain", plains[n])):
            await client.wait_terminal(stream_id, within=30)
            problems += _check(f"{label} {n}", client, stream_id, done)
        for label, client in (("owner", owners[n]), ("tab", tabs[n])):
            got = _reasoning(client, stream_id)
            problems += _check_reasoning(f"{label} {n}", got)
            if "".join(e["reasoning"] for e in got) != full:
                problems.append(f"{label} {n}: reasoning differs")
        if _reasoning(plains[n], stream_id):
            problems.append(f"plain {n}: got reasoning")
    assert_none(problems)
    async with aiohttp.ClientSession() as http:
        for worker in (a, b):
            assert_none(await worker_problems(http, worker.url))


async def test_a_join_on_the_other_worker_reports_where_its_live_events_begin(
    pair: tuple[Worker, Worker], clients: list[RecordingClient]
) -> None:
    """The `seq` and `reasoning_seq` a join reports are exact, also for a stream this
    worker starts tailing midway: a resume after them completes the reply once."""
    a, b = pair
    owner, tab = await _client(clients, a), await _client(clients, b)
    ack = await owner.call("chat_stream", {"message": "count me", "reasoning": True})
    stream_id = ack["stream_id"]
    await owner.wait_for(lambda _: len(_reasoning(owner, stream_id)) >= 3, within=20)
    joined = await tab.call("session_join", {"session_id": ack["session_id"], "reasoning": True})
    active = joined["active_stream"]
    assert active["stream_id"] == stream_id
    assert active["reasoning_seq"] >= 3
    first = await tab.wait_for(
        lambda events: next((e for e in events if e[0] in ("chat_reasoning", "chat_token")), None)
    )
    if first[0] == "chat_reasoning":
        assert first[1]["seq"] == active["reasoning_seq"] + 1
    else:
        assert first[1]["seq"] == active["seq"] + 1
    # Ask only for what came before the live events: nothing twice, nothing missing.
    reply = await tab.call(
        "chat_resume",
        {"stream_id": stream_id, "reasoning": True, "after": 0, "after_reasoning": 0},
    )
    assert reply["ok"], reply
    _, done = await owner.wait_terminal(stream_id, within=30)
    await tab.wait_terminal(stream_id, within=30)
    live = [e for e in tab.of("chat_reasoning", stream_id) if e["seq"] > active["reasoning_seq"]]
    assert live, "reasoning after the join arrived live"
    assert_none(
        _check("tab", tab, stream_id, done) + _check_reasoning("tab", _reasoning(tab, stream_id))
    )
    full = "".join(e["reasoning"] for e in _reasoning(owner, stream_id))
    assert "".join(e["reasoning"] for e in _reasoning(tab, stream_id)) == full
