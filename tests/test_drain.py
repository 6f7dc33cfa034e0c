"""SIGTERM drains a worker: a rolling deploy loses no token and the exit is bounded.

Two real workers on one real redis-server; python-socketio clients (node's
socket.io-client in tests/test_drain_node.py). The worker signalled hands its
clients off (`server_draining`, then an Engine.IO close); each reconnects to
the other worker and resumes from its last seq, while the signalled worker
keeps generating its streams to the end.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import socketio

from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    check_text,
    log_problems,
    merge_tokens,
    seen,
    worker_problems,
)
from tests.support.node import ROOT, require_node
from tests.support.process import Worker
from tests.support.redis_server import RedisServer

# The bound, plus what a loaded 2-core CI box needs to start a process's
# teardown and reap it (the bound is measured from the signal to the exit).
EXIT_SLACK_S = 1.5
STREAMS = 10


def _pair(redis: RedisServer, tps: int, **env: str) -> tuple[Worker, Worker]:
    common = {
        "REDIS_URL": redis.url,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": str(tps),
        "CHATSOCK_STREAM__LEASE_S": "3",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "100",
        **env,
    }
    return (
        Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-a"}),
        Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-b"}),
    )


async def _start(*workers: Worker) -> None:
    await asyncio.gather(*(asyncio.to_thread(w.start) for w in workers))


async def _stop(*workers: Worker) -> None:
    await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))


class Mover:
    """One user's tab: starts a stream on one worker and, told the worker drains,
    follows it from another by `chat_resume` after its last seq."""

    def __init__(self, first: Worker, second: Worker) -> None:
        self.first, self.second = first, second
        self.a = RecordingClient()
        self.b: RecordingClient | None = None
        self.ack: dict[str, Any] = {}
        self.resume: dict[str, Any] | None = None

    async def start(self, message: str) -> None:
        await self.a.connect(self.first.url)
        self.ack = await self.a.call("chat_stream", {"message": message})
        assert self.ack.get("ok"), self.ack

    @property
    def stream_id(self) -> str:
        return str(self.ack["stream_id"])

    def events(self) -> list[tuple[str, Any]]:
        return self.a.events + (self.b.events if self.b is not None else [])

    async def move(self) -> None:
        """What a client does with `server_draining`: once disconnected, reconnect
        elsewhere and resume."""
        await self.a.wait_event("server_draining", within=10)
        await asyncio.wait_for(self.a.disconnected.wait(), 10)
        last = seen(self.a.events, self.stream_id).last_seq
        self.b = await RecordingClient().connect(self.second.url)
        self.resume = await self.b.call("chat_resume", {"stream_id": self.stream_id, "after": last})

    async def finish(self, within: float) -> None:
        assert self.b is not None
        await self.b.wait_terminal(self.stream_id, within=within)

    async def close(self) -> None:
        await self.a.close()
        if self.b is not None:
            await self.b.close()


async def _readyz(http: aiohttp.ClientSession, worker: Worker) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{worker.url}/readyz") as reply:
        return reply.status, await reply.json(content_type=None)


async def _until_draining(http: aiohttp.ClientSession, worker: Worker) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            status, body = await _readyz(http, worker)
            if status == 503 and body.get("status") == "draining":
                return body
            await asyncio.sleep(0.02)


def _exited_within(worker: Worker, t0: float, bound: float) -> tuple[int, float]:
    code = worker.wait(bound + 30)
    return code, time.monotonic() - t0


async def _session(http: aiohttp.ClientSession, worker: Worker, session_id: str) -> Any:
    async with http.get(f"{worker.url}/api/chat/sessions/{session_id}") as reply:
        assert reply.status == 200, await reply.text()
        return await reply.json()


def _check_moved(movers: list[Mover], sessions: dict[str, Any], ended: str) -> list[str]:
    """Each tab got every seq once across both workers, one terminal of kind `ended`,
    the text it spells, and the reply stored once as the terminal says."""
    problems: list[str] = []
    for mover in movers:
        label = mover.stream_id
        view = seen(mover.events(), mover.stream_id)
        tokens, clash = merge_tokens(label, [view])
        problems += clash
        problems += check_follower(label, view, start=1, must_end=True, tokens=tokens)
        if mover.resume is None or not mover.resume.get("ok"):
            problems.append(f"{label}: chat_resume answered {mover.resume}")
        if not view.terminals:
            continue
        terminal = view.terminals[0]
        if terminal[0] != ended:
            problems.append(f"{label}: ended {terminal[0]} {terminal[1].get('code')}")
        problems += check_text(label, terminal, tokens)
        messages = sessions[mover.ack["session_id"]]["messages"]
        problems += check_persisted(label, messages, mover.ack["message_id"], terminal)
    return problems


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.redis
async def test_sigterm_hands_clients_off_and_every_reply_arrives_whole_exactly_once(
    private_redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    a, b = _pair(private_redis_server, tps=30)
    await _start(a, b)
    movers = [Mover(a, b) for _ in range(STREAMS)]
    tabs: list[RecordingClient] = []
    try:
        await asyncio.gather(*(m.start("a long demo reply please") for m in movers))
        for mover in movers:
            await mover.a.wait_for(lambda _, m=mover: len(m.a.tokens(m.stream_id)) >= 2)
        # A second tab of each conversation on the worker that stays: the stream's
        # owner restarts under it.
        tabs += [await RecordingClient().connect(b.url) for _ in movers]
        for tab, mover in zip(tabs, movers, strict=True):
            joined = await tab.call("session_join", {"session_id": mover.ack["session_id"]})
            assert joined["active_stream"]["stream_id"] == mover.stream_id
            assert (await tab.call("chat_resume", {"stream_id": mover.stream_id}))["ok"]
        t0 = time.monotonic()
        a.signal(signal.SIGTERM)
        moving = asyncio.gather(*(m.move() for m in movers))
        body = await _until_draining(http, a)
        assert "draining" in body["reason"]

        # While it drains: no new stream, no new socket; the load balancer goes elsewhere.
        async with http.post(f"{a.url}/api/chat/stream", json={"message": "late"}) as reply:
            refused = await reply.json()
        assert reply.status == 503
        assert refused["error"]["code"] == "server_shutdown"
        assert refused["error"]["retryable"] is True
        late = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await late.connect(a.url, transports=["polling"], wait_timeout=5)

        await moving
        await asyncio.gather(*(m.finish(within=30) for m in movers))
        code, elapsed = await asyncio.to_thread(_exited_within, a, t0, 60 + 5 + 1)
        assert code == 0, a.log()
        assert elapsed < 60, "the streams ended long before the drain timeout; so did the worker"

        sessions = {
            m.ack["session_id"]: await _session(http, b, m.ack["session_id"]) for m in movers
        }
        problems = _check_moved(movers, sessions, "chat_complete")
        for tab, mover in zip(tabs, movers, strict=True):
            await tab.wait_terminal(mover.stream_id, within=30)
            view = seen(tab.events, mover.stream_id)
            tokens, _ = merge_tokens(mover.stream_id, [view])
            problems += check_follower(
                f"second tab of {mover.stream_id}", view, start=1, must_end=True, tokens=tokens
            )
            if view.terminals != seen(mover.events(), mover.stream_id).terminals:
                problems.append(f"{mover.stream_id}: the two tabs got different ends")
        problems += await worker_problems(http, b.url)
        problems += log_problems("worker-a", a.log())
        problems += log_problems("worker-b", b.log())
        assert_none(problems)
        assert "drained: every stream ended" in a.log()
    finally:
        await asyncio.gather(*(m.close() for m in movers), *(t.close() for t in tabs))
        await _stop(a, b)


@pytest.mark.redis
async def test_a_stream_outliving_the_drain_ends_with_its_partial_and_the_exit_is_bounded(
    private_redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """drain 2 s + grace 1 s; a slow stream outlives both, and a peer that stopped
    responding entirely (a SIGSTOPped node client) holds its socket open."""
    drain_s, grace_s = 2.0, 1.0
    env = {
        "CHATSOCK_SERVER__DRAIN_TIMEOUT_S": str(drain_s),
        "CHATSOCK_SERVER__SHUTDOWN_GRACE_S": str(grace_s),
    }
    a, b = _pair(private_redis_server, tps=8, **env)
    await _start(a, b)
    movers = [Mover(a, b) for _ in range(4)]
    frozen = _frozen_node_client(a)
    try:
        await asyncio.gather(*(m.start("a long demo reply please") for m in movers))
        for mover in movers:
            await mover.a.wait_for(lambda _, m=mover: len(m.a.tokens(m.stream_id)) >= 1)
        t0 = time.monotonic()
        a.signal(signal.SIGTERM)
        await asyncio.gather(*(m.move() for m in movers))
        code, elapsed = await asyncio.to_thread(_exited_within, a, t0, drain_s + grace_s + 1)
        assert code == 0, a.log()
        # The bound the issue sets, with slack for process teardown on a busy box.
        assert elapsed <= drain_s + grace_s + 1 + EXIT_SLACK_S, a.log()
        await asyncio.gather(*(m.finish(within=20) for m in movers))

        sessions = {
            m.ack["session_id"]: await _session(http, b, m.ack["session_id"]) for m in movers
        }
        problems = _check_moved(movers, sessions, "chat_stream_error")
        for mover in movers:
            _, payload = seen(mover.events(), mover.stream_id).terminals[0]
            if (payload.get("code"), payload.get("retryable")) != ("server_shutdown", True):
                problems.append(f"{mover.stream_id}: ended {payload}")
        problems += await worker_problems(http, b.url)
        problems += log_problems("worker-a", a.log(), allowed=[r"drain timed out"])
        assert_none(problems)
    finally:
        _thaw(frozen)
        await asyncio.gather(*(m.close() for m in movers))
        await _stop(a, b)


async def test_with_the_memory_store_the_worker_keeps_its_clients_and_finishes_its_streams(
    http: aiohttp.ClientSession,
) -> None:
    worker = Worker(env={"CHATSOCK_DEMO_TOKENS_PER_SECOND": "30"}).start()
    clients = [RecordingClient() for _ in range(5)]
    frozen = _frozen_node_client(worker)
    try:
        acks = []
        for client in clients:
            await client.connect(worker.url)
            acks.append(await client.call("chat_stream", {"message": "a long demo reply please"}))
        for client, ack in zip(clients, acks, strict=True):
            await client.wait_for(lambda _, c=client, a=ack: c.tokens(a["stream_id"]))
        t0 = time.monotonic()
        worker.signal(signal.SIGTERM)
        await _until_draining(http, worker)
        late = await clients[0].call("chat_stream", {"message": "one more"})
        assert late["ok"] is False
        assert (late["error"]["code"], late["error"]["retryable"]) == ("server_shutdown", True)
        problems: list[str] = []
        for client, ack in zip(clients, acks, strict=True):
            event, _ = await client.wait_terminal(ack["stream_id"], within=20)
            view = seen(client.events, ack["stream_id"])
            tokens, clash = merge_tokens(ack["stream_id"], [view])
            problems += clash + check_follower(
                ack["stream_id"], view, start=1, must_end=True, tokens=tokens
            )
            if event != "chat_complete":
                problems.append(f"{ack['stream_id']}: ended {event}")
        assert not any(c.of("server_draining") for c in clients), "memory store: no hand-off"
        code, elapsed = await asyncio.to_thread(_exited_within, worker, t0, 60 + 5 + 1)
        assert code == 0, worker.log()
        assert elapsed < 30
        problems += log_problems("worker", worker.log())
        assert_none(problems)
    finally:
        _thaw(frozen)
        for client in clients:
            await client.close()
        worker.stop()


def _frozen_node_client(worker: Worker) -> subprocess.Popen[bytes]:
    """A socket.io-client (node) that connects over WebSocket, then is SIGSTOPped:
    a peer that neither reads nor answers a close handshake."""
    script = (
        "import { io } from 'socket.io-client';"
        f"const s = io('{worker.url}', {{transports: ['websocket'], reconnection: false}});"
        "s.on('connect', () => console.log('connected'));"
    )
    proc = subprocess.Popen(
        [require_node(), "--input-type=module", "-e", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"connected", line
    proc.send_signal(signal.SIGSTOP)
    return proc


def _thaw(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
