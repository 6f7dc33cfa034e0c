"""A rolling restart behind the shipped nginx config: clients handed off land elsewhere.

nginx hashes every loopback client to one worker (`ip_hash`). That worker is
sent SIGTERM mid-stream: it tells its sockets to reconnect and refuses new
Engine.IO handshakes with 503 while it finishes its streams. The clients
reconnect through nginx, which (`proxy_next_upstream ... http_503`) retries the
handshake on the other worker, and resume there: every reply arrives whole,
exactly once, while the draining worker is still running.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import pytest

from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    check_text,
    log_problems,
    merge_tokens,
    seen,
    stream_tasks,
    worker_problems,
)
from tests.support.nginx import Nginx
from tests.support.process import Worker

pytestmark = pytest.mark.redis

CLIENTS = 8


class Tab:
    """One user's tab, always connected through nginx."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.first = RecordingClient()
        self.second: RecordingClient | None = None
        self.ack: dict[str, Any] = {}
        self.resume: dict[str, Any] = {}

    @property
    def stream_id(self) -> str:
        return str(self.ack["stream_id"])

    async def start(self) -> None:
        await self.first.connect(self.url)
        self.ack = await self.first.call("chat_stream", {"message": "a long demo reply please"})
        assert self.ack.get("ok"), self.ack
        await self.first.wait_for(lambda _: len(self.first.tokens(self.stream_id)) >= 2)

    async def move(self) -> None:
        """Told the worker drains: reconnect (through nginx) and resume after the last seq."""
        await self.first.wait_event("server_draining", within=10)
        await asyncio.wait_for(self.first.disconnected.wait(), 10)
        last = seen(self.first.events, self.stream_id).last_seq
        self.second = await RecordingClient().connect(self.url)
        self.resume = await self.second.call(
            "chat_resume", {"stream_id": self.stream_id, "after": last}
        )

    def events(self) -> list[tuple[str, Any]]:
        return self.first.events + (self.second.events if self.second else [])

    async def close(self) -> None:
        await self.first.close()
        if self.second is not None:
            await self.second.close()


async def _running(http: aiohttp.ClientSession, worker: Worker) -> float | None:
    """The stream tasks this worker runs (/api/chat/stream/active counts every worker's)."""
    return await stream_tasks(http, worker.url)


async def test_a_draining_worker_behind_nginx_hands_every_client_to_the_other(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "30",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "100",
    }
    workers = [
        Worker(env={**env, "CHATSOCK_SERVER__WORKER_ID": f"nginx-drain-{n}"}) for n in (1, 2)
    ]
    await asyncio.gather(*(asyncio.to_thread(w.start) for w in workers))
    proxy = Nginx([w.port for w in workers])
    tabs: list[Tab] = []
    try:
        await asyncio.to_thread(proxy.start)
        tabs = [Tab(proxy.url) for _ in range(CLIENTS)]
        await asyncio.gather(*(tab.start() for tab in tabs))
        counts = [await _running(http, w) for w in workers]
        assert 0 in counts, counts  # ip_hash: one worker runs them all, the other none
        assert counts != [0, 0], counts
        owner, other = workers if counts[0] else workers[::-1]

        owner.signal(signal.SIGTERM)
        await asyncio.gather(*(tab.move() for tab in tabs))
        # Every tab reconnected through nginx while the owner still runs (draining,
        # refusing handshakes with 503): nginx took them to the other worker.
        assert owner.proc is not None
        assert owner.proc.poll() is None, owner.log()
        assert [tab.resume.get("ok") for tab in tabs] == [True] * CLIENTS, [t.resume for t in tabs]
        for tab in tabs:
            assert tab.second is not None
            await tab.second.wait_terminal(tab.stream_id, within=30)
        assert await asyncio.to_thread(owner.wait, 30) == 0, owner.log()

        problems: list[str] = []
        for tab in tabs:
            view = seen(tab.events(), tab.stream_id)
            tokens, clash = merge_tokens(tab.stream_id, [view])
            problems += clash
            problems += check_follower(tab.stream_id, view, start=1, must_end=True, tokens=tokens)
            if view.terminals:
                problems += check_text(tab.stream_id, view.terminals[0], tokens)
                async with http.get(f"{other.url}/api/chat/sessions/{tab.ack['session_id']}") as r:
                    messages = (await r.json())["messages"]
                problems += check_persisted(
                    tab.stream_id, messages, tab.ack["message_id"], view.terminals[0]
                )
        problems += await worker_problems(http, other.url)
        problems += log_problems("owner", owner.log())
        problems += log_problems("other", other.log())
        assert_none(problems)
    finally:
        await asyncio.gather(*(tab.close() for tab in tabs))
        proxy.stop()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
