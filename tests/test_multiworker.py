"""Two real chatsock workers on one real redis-server behave as one server."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator

import pytest

from tests.support.clients import RecordingClient
from tests.support.node import run_node_client
from tests.support.process import Worker
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


def _workers(redis: RedisServer, tps: int, **env: str) -> tuple[Worker, Worker]:
    common = {
        "REDIS_URL": redis.url,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": str(tps),
        "CHATSOCK_STREAM__LEASE_S": env.pop("lease", "3"),
        **env,
    }
    return (
        Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-a"}),
        Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-b"}),
    )


@pytest.fixture
async def cluster(private_redis_server: RedisServer) -> AsyncIterator[tuple[Worker, Worker]]:
    a, b = _workers(private_redis_server, tps=60)
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    yield a, b
    await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def _client(clients: list[RecordingClient], worker: Worker) -> RecordingClient:
    client = await RecordingClient().connect(worker.url)
    clients.append(client)
    return client


def _text(tokens):
    return "".join(t["token"] for t in tokens)


def _assert_contiguous(tokens, first=1):
    assert [t["seq"] for t in tokens] == list(range(first, first + len(tokens)))


async def test_stop_on_b_stops_a_stream_running_on_a(cluster, clients):
    a, b = cluster
    on_a, on_b = await _client(clients, a), await _client(clients, b)
    ack = await on_a.call("chat_stream", {"message": "stop me from elsewhere"})
    sid = ack["stream_id"]
    await on_a.wait_for(lambda _: len(on_a.tokens(sid)) >= 2)
    started = time.monotonic()
    assert await on_b.call("chat_stop", {"stream_id": sid}) == {"ok": True, "stopped": True}
    event, done = await on_a.wait_terminal(sid)
    elapsed = time.monotonic() - started
    assert event == "chat_complete"
    assert done["stopped"] is True
    assert done["full_response"] == _text(on_a.tokens(sid))
    assert elapsed < 1.0, f"cross-worker stop took {elapsed:.3f}s"
    print(f"cross-worker stop: {elapsed * 1000:.1f} ms from chat_stop ack to chat_complete")
    joined = await on_b.call("session_join", {"session_id": ack["session_id"]})
    assert joined["messages"][-1]["status"] == "stopped"
    assert joined["active_stream"] is None


async def test_resume_on_b_mid_stream_after_disconnect_from_a(cluster, clients):
    a, b = cluster
    on_a = await _client(clients, a)
    ack = await on_a.call("chat_stream", {"message": "resume me on the other worker"})
    sid = ack["stream_id"]
    await on_a.wait_for(lambda _: len(on_a.tokens(sid)) >= 3)
    await on_a.close()
    seen = on_a.tokens(sid)
    on_b = await _client(clients, b)
    reply = await on_b.call("chat_resume", {"stream_id": sid, "after": seen[-1]["seq"]})
    assert reply == {"ok": True, "status": "streaming"}
    event, done = await on_b.wait_terminal(sid, within=20)
    assert event == "chat_complete"
    resumed = on_b.tokens(sid)
    _assert_contiguous(resumed, seen[-1]["seq"] + 1)
    assert _text(seen) + _text(resumed) == done["full_response"]


async def test_resume_on_b_after_the_end(cluster, clients):
    a, b = cluster
    on_a = await _client(clients, a)
    ack = await on_a.call("chat_stream", {"message": "short"})
    sid = ack["stream_id"]
    _, done = await on_a.wait_terminal(sid, within=20)
    on_b = await _client(clients, b)
    reply = await on_b.call("chat_resume", {"stream_id": sid, "after": 2})
    assert reply == {"ok": True, "status": "complete"}
    tokens = on_b.tokens(sid)
    _assert_contiguous(tokens, 3)
    assert tokens == on_a.tokens(sid)[2:]
    assert on_b.of("chat_complete", sid) == [done]


async def test_second_tab_on_b_receives_every_token_of_a_stream_on_a(cluster, clients):
    a, b = cluster
    on_a, on_b = await _client(clients, a), await _client(clients, b)
    first = await on_a.call("chat_stream", {"message": "open the session", "session_id": "tabs"})
    await on_a.wait_terminal(first["stream_id"], within=20)
    joined = await on_b.call("session_join", {"session_id": "tabs"})
    assert joined["ok"]
    assert joined["active_stream"] is None
    ack = await on_a.call(
        "chat_stream", {"message": "the second tab watches", "session_id": "tabs"}
    )
    sid = ack["stream_id"]
    _, done_a = await on_a.wait_terminal(sid, within=20)
    _, done_b = await on_b.wait_terminal(sid, within=20)
    assert done_b == done_a
    assert on_b.of("chat_stream_start", sid) == on_a.of("chat_stream_start", sid)
    assert on_b.tokens(sid) == on_a.tokens(sid)
    _assert_contiguous(on_b.tokens(sid))
    assert _text(on_b.tokens(sid)) == done_a["full_response"]


async def test_node_second_tab_on_b_resumes_a_live_stream_from_a(cluster, clients):
    a, b = cluster
    on_a = await _client(clients, a)
    ack = await on_a.call("chat_stream", {"message": "node follows", "session_id": "node-tab"})
    sid = ack["stream_id"]
    await on_a.wait_for(lambda _: len(on_a.tokens(sid)) >= 2)
    result = await run_node_client(b.url, "resume", session_id="node-tab", stream_id=sid, after=0)
    _, done = await on_a.wait_terminal(sid, within=20)
    tokens = [d for e, d in result["events"] if e == "chat_token" and d["stream_id"] == sid]
    # Joined mid-stream, the tab got live tokens at once; the resume then sent the
    # earlier ones. Every seq exactly once; in seq order they spell the reply.
    in_order = sorted(tokens, key=lambda t: t["seq"])
    _assert_contiguous(in_order)
    assert result["end"] == ["chat_complete", done]
    assert _text(in_order) == done["full_response"]


async def test_sigkill_of_the_owner_gives_worker_lost_to_followers_elsewhere(
    private_redis_server,
    clients,
):
    a, b = _workers(private_redis_server, tps=10, lease="2")
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    try:
        on_a, on_b = await _client(clients, a), await _client(clients, b)
        ack = await on_a.call("chat_stream", {"message": "doomed", "session_id": "lost"})
        sid = ack["stream_id"]
        await on_a.wait_for(lambda _: len(on_a.tokens(sid)) >= 3)
        joined = await on_b.call("session_join", {"session_id": "lost"})
        assert joined["active_stream"]["stream_id"] == sid
        assert (await on_b.call("chat_resume", {"stream_id": sid, "after": 0}))["ok"]
        a.signal(signal.SIGKILL)
        killed = time.monotonic()
        event, err = await on_b.wait_terminal(sid, within=15)
        noticed = time.monotonic() - killed
        assert event == "chat_stream_error"
        assert err["code"] == "worker_lost"
        assert err["partial"] == _text(on_b.tokens(sid))
        _assert_contiguous(on_b.tokens(sid))
        assert noticed < 2 + 3, f"worker loss noticed after {noticed:.1f}s"
        print(f"worker_lost noticed {noticed:.2f}s after SIGKILL (lease 2s)")
        again = await on_b.call("session_join", {"session_id": "lost"})
        assert again["active_stream"] is None
        last = again["messages"][-1]
        assert (last["role"], last["status"], last["error_code"]) == (
            "assistant",
            "error",
            "worker_lost",
        )
        assert last["content"] == err["partial"]
        # The session is usable again: its slot was freed.
        new = await on_b.call("chat_stream", {"message": "after the loss", "session_id": "lost"})
        assert new["ok"], new
        event, _ = await on_b.wait_terminal(new["stream_id"], within=30)
        assert event == "chat_complete"
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


def _ready(worker: Worker) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{worker.url}/readyz", timeout=3) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def test_redis_restart_mid_run_then_new_streams_work_on_both(private_redis_server, clients):
    redis = private_redis_server
    a, b = _workers(redis, tps=30)
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    try:
        on_a, on_b = await _client(clients, a), await _client(clients, b)
        ack = await on_a.call("chat_stream", {"message": "survive a redis restart"})
        sid = ack["stream_id"]
        await on_a.wait_for(lambda _: len(on_a.tokens(sid)) >= 2)
        await asyncio.to_thread(redis.stop, kill=True)
        status, body = await asyncio.to_thread(_ready, b)
        assert status == 503
        assert "Redis is not reachable" in body["reason"]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis.start)
        # The in-flight stream finishes or ends with an explicit error, never silence.
        event, end = await on_a.wait_terminal(sid, within=30)
        assert event in ("chat_complete", "chat_stream_error")
        if event == "chat_complete":
            assert end["full_response"] == _text(on_a.tokens(sid))
        else:
            assert end["partial"] == _text(on_a.tokens(sid))
        # Workers reconnected by themselves, listeners included.
        for worker in (a, b):
            assert worker.proc is not None
            assert worker.proc.poll() is None
        for _ in range(150):
            if all(_ready(w)[0] == 200 for w in (a, b)):
                break
            await asyncio.sleep(0.1)
        for worker in (a, b):
            status, body = _ready(worker)
            assert status == 200, body
        # Both listeners hear messages published after the restart: the heartbeats
        # (signals every 2 s, Socket.IO manager every 1 s) keep arriving.
        await asyncio.sleep(3.0)
        for worker in (a, b):
            status, body = _ready(worker)
            assert status == 200, body
            heard = body["listeners_heard_s"]
            assert heard["signals"] is not None
            assert heard["signals"] < 2.5, body
            assert heard["socketio"] is not None
            assert heard["socketio"] < 1.5, body
        # New streams work on both, and cross-worker stop works (signals re-subscribed).
        for client in (on_a, on_b):
            fresh = await client.call("chat_stream", {"message": "after the restart"})
            assert fresh["ok"], fresh
            event, _ = await client.wait_terminal(fresh["stream_id"], within=30)
            assert event == "chat_complete"
        ack = await on_a.call("chat_stream", {"message": "stop me after the restart"})
        await on_a.wait_for(lambda _: on_a.tokens(ack["stream_id"]))
        started = time.monotonic()
        assert (await on_b.call("chat_stop", {"stream_id": ack["stream_id"]}))["stopped"]
        event, done = await on_a.wait_terminal(ack["stream_id"])
        assert done["stopped"] is True
        assert time.monotonic() - started < 1.0  # listeners are back (readyz checked them)
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def test_stop_on_disconnect_counts_followers_on_every_worker(private_redis_server, clients):
    a, b = _workers(private_redis_server, tps=20, CHATSOCK_STREAM__STOP_ON_DISCONNECT="true")
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    try:
        on_a, on_b = await _client(clients, a), await _client(clients, b)
        ack = await on_a.call("chat_stream", {"message": "who is watching", "session_id": "pres"})
        sid = ack["stream_id"]
        joined = await on_b.call("session_join", {"session_id": "pres"})
        assert joined["active_stream"]["stream_id"] == sid
        await on_a.close()  # the owner's own follower leaves; the tab on B remains
        await asyncio.sleep(2.0)
        count = len(on_b.tokens(sid))
        await on_b.wait_for(lambda _: len(on_b.tokens(sid)) > count + 5, within=10)
        assert not on_b.of("chat_complete", sid)
        await on_b.close()  # now nobody follows it anywhere
        await asyncio.sleep(4.0)  # presence lapses (3 s) and the owner checks every 0.5 s
        watcher = await _client(clients, a)
        later = await watcher.call("session_join", {"session_id": "pres"})
        assert later["active_stream"] is None
        assert later["messages"][-1]["status"] == "stopped"
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
