"""The page over two real workers on one Redis, in headless Chromium: a reload
mid-reply and a second tab opened by URL on the other worker both follow the
reply with no gap and no duplicate, and many tabs stream at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from chatsock.providers.demo import demo_reply
from tests.support.browser import run_browser_script
from tests.support.invariants import assert_none, log_problems, worker_problems
from tests.support.process import Worker
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.node, pytest.mark.redis, pytest.mark.timeout(150)]


@pytest.fixture
async def workers(private_redis_server: RedisServer) -> AsyncIterator[list[Worker]]:
    env = {
        "REDIS_URL": private_redis_server.url,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "15",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "100",
    }
    made = [Worker(env={**env, "CHATSOCK_SERVER__WORKER_ID": f"page-{n}"}) for n in "ab"]
    try:
        await asyncio.gather(*(asyncio.to_thread(w.start) for w in made))
        yield made
    finally:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in made))


async def _stored(http: aiohttp.ClientSession, url: str, session_id: str) -> list[Any]:
    async with http.get(f"{url}/api/chat/sessions/{session_id}") as reply:
        assert reply.status == 200
        body = await reply.json()
    return [(m["role"], m["content"], m["status"]) for m in body["messages"]]


def _shown(messages: list[dict[str, Any]]) -> list[Any]:
    return [(m["role"], m["content"], m["status"]) for m in messages]


async def _clean(http: aiohttp.ClientSession, workers: list[Worker]) -> None:
    problems: list[str] = []
    for worker in workers:
        problems += await worker_problems(http, worker.url)
        problems += log_problems(worker.url, worker.log())
    assert_none(problems)


async def test_a_reload_and_a_second_tab_follow_the_reply_on_either_worker(workers):
    a, b = workers
    options = {"other": f"{b.url}/", "message": "follow me", "second": "and reply to this"}
    result = await run_browser_script("page.mjs", "follow", f"{a.url}/", json.dumps(options))
    assert "failure" not in result, result.get("failure")
    assert result["errors"] == []
    assert result["aAfterReload"] in ("pending", "streaming")  # the reload came mid-reply
    first = [
        ("user", "follow me", "complete"),
        ("assistant", demo_reply("follow me"), "complete"),
    ]
    # The reloaded tab and the second tab (on the other worker) show the reply
    # once, whole: what was stored.
    assert _shown(result["a"]) == first
    assert _shown(result["b"]) == first
    second = [
        *first,
        ("user", "and reply to this", "complete"),
        ("assistant", demo_reply("and reply to this"), "complete"),
    ]
    # A reply sent from the second tab reaches the first live.
    assert _shown(result["a2"]) == second
    assert _shown(result["b2"]) == second
    assert result["bubblesA"] == 2
    async with aiohttp.ClientSession() as http:
        assert await _stored(http, a.url, result["session"]) == second
        await _clean(http, workers)


async def test_many_tabs_stream_at_once_over_two_workers(workers):
    a, b = workers
    tabs = 6
    options = {"other": f"{b.url}/", "tabs": tabs}
    result = await run_browser_script(
        "page.mjs", "many", f"{a.url}/", json.dumps(options), within=120
    )
    assert "failure" not in result, result.get("failure")
    assert result["errors"] == []
    assert len(result["tabs"]) == tabs
    async with aiohttp.ClientSession() as http:
        for i, tab in enumerate(result["tabs"]):
            message = f"tab {i} asks about {'x' * (i + 1)}"
            expected = [
                ("user", message, "complete"),
                ("assistant", demo_reply(message), "complete"),
            ]
            # Sender and follower (on the other worker, opened mid-reply) both
            # show the stored reply, once.
            assert _shown(tab["sender"]) == expected, (i, tab)
            assert _shown(tab["follower"]) == expected, (i, tab)
            assert tab["followerBubbles"] == 1, (i, tab)
            assert await _stored(http, a.url, tab["session"]) == expected
        assert len({tab["session"] for tab in result["tabs"]}) == tabs
        await _clean(http, workers)
