"""useChat against chatsock with the real `ai` and `@ai-sdk/react` packages under node.

Two real `chatsock serve` workers share a real redis-server. tests/js/aisdk.mjs
runs @ai-sdk/react's `Chat` (what useChat drives) with the `ai` package's
DefaultChatTransport: chats that complete, chats whose connection to worker A is
dropped (a loopback proxy aborts it) and resume on worker B, chats stopped with
`stop()`, and chats resumed on B by a second page whose stop stops the stream A
runs. Every text the client ends with is checked against the stored reply.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.invariants import assert_none, log_problems
from tests.support.node import CLIENT, require_node
from tests.support.process import ROOT, Worker
from tests.support.redis_server import RedisServer
from tests.support.subprocesses import json_line
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis

SCRIPT = CLIENT.parent / "aisdk.mjs"
COUNT = 3  # chats of each kind
GRACE_S = 1.0


def _node() -> str:
    node = require_node()
    for package in ("ai", "@ai-sdk/react", "react-dom", "@testing-library/react", "jsdom"):
        if not (ROOT / "node_modules" / package).is_dir():
            pytest.fail(f"node_modules/{package} is missing: run `npm ci` in the repository root")
    return node


async def _reply(http: aiohttp.ClientSession, url: str, chat_id: str) -> dict[str, Any]:
    """The chat's stored assistant reply, once stored (a stop stores it a moment later)."""
    async with asyncio.timeout(15):
        while True:
            async with http.get(f"{url}/api/chat/sessions/{chat_id}") as response:
                assert response.status == 200, chat_id
                messages = (await response.json())["messages"]
            if messages and messages[-1]["role"] == "assistant":
                return dict(messages[-1])
            await asyncio.sleep(0.05)


def _check(chat: dict[str, Any], reply: dict[str, Any]) -> list[str]:
    kind, text, stored = chat["kind"], chat["text"], reply["content"]
    label = f"{chat['id']} ({kind})"
    problems = []
    if chat["messageId"] != reply["message_id"]:
        problems.append(f"{label}: message id {chat['messageId']} != {reply['message_id']}")
    if kind in ("complete", "drop"):
        if (reply["status"], chat["status"]) != ("complete", "ready"):
            problems.append(f"{label}: {reply['status']} / {chat['status']} {chat['errors']}")
        if text != stored:
            problems.append(f"{label}: text {text!r} != stored {stored!r}")
    elif kind in ("stop", "moved-stop"):
        if reply["status"] != "stopped":
            problems.append(f"{label}: stored {reply['status']}, not stopped")
        if not stored.startswith(text) or not text:
            problems.append(f"{label}: text {text!r} is not a start of {stored!r}")
        if chat["errors"]:
            problems.append(f"{label}: errors {chat['errors']}")
    if kind == "drop" and chat["notes"]["afterDrop"]["status"] != "error":
        problems.append(f"{label}: the drop was not seen: {chat['notes']}")
    if kind == "moved-stop" and not chat["notes"]["streamingAfterFirstStop"]:
        problems.append(f"{label}: the first tab's stop stopped a resumed stream: {chat}")
    return problems


@pytest.fixture
def two_workers(private_redis_server: RedisServer) -> Iterator[tuple[Worker, Worker]]:
    """Workers A and B on one redis-server, with a slow demo reply and a short grace."""
    common = {
        "REDIS_URL": private_redis_server.url,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "12",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "100",
        "CHATSOCK_HTTP__AISDK_RESUME_GRACE_S": str(GRACE_S),
    }
    a = Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-a"})
    b = Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-b"})
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


async def test_use_chat_streams_stops_and_resumes_on_the_other_worker(
    two_workers: tuple[Worker, Worker],
) -> None:
    a, b = two_workers
    proc = None
    try:
        async with TcpProxy("127.0.0.1", a.port) as proxy:
            args = {
                "a": f"http://127.0.0.1:{proxy.port}",
                "aDirect": a.url,
                "b": b.url,
                "count": COUNT,
                "graceMs": GRACE_S * 1000,
                "message": "tell me about streams",
            }
            proc = await asyncio.create_subprocess_exec(
                _node(),
                str(SCRIPT),
                json.dumps(args),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ROOT,
                limit=2**24,
            )
            ready = await json_line(proc, 60)
            assert ready.get("ready"), ready
            assert proxy.drop_all() >= COUNT  # the drop chats' POSTs to A
            assert proc.stdin is not None
            proc.stdin.write(b"dropped\n")
            await proc.stdin.drain()
            result = await json_line(proc, 60)
            assert not result.get("timedOut"), result
            assert await proc.wait() == 0
        chats = [c for c in result["chats"] if c["kind"] != "moved-first"]
        assert sorted(c["kind"] for c in chats) == sorted(
            ["complete", "drop", "stop", "moved-stop"] * COUNT
        )
        problems: list[str] = []
        async with aiohttp.ClientSession() as http:
            for chat in chats:
                problems += _check(chat, await _reply(http, b.url, chat["id"]))
            for url in (a.url, b.url):
                async with http.get(f"{url}/api/chat/stream/active") as response:
                    active = await response.json()
                if active["count"]:
                    problems.append(f"{url}: streams left running: {active}")
        problems += log_problems("worker-a", a.log())
        problems += log_problems("worker-b", b.log())
        assert_none(problems)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_use_chat_rendered_in_react_completes_and_resumes_after_a_reload(
    two_workers: tuple[Worker, Worker],
) -> None:
    """The useChat hook itself (@testing-library/react, jsdom): a reply rendered to its
    end, and a reload mid-reply whose `resume: true` mount is answered by the other
    worker, renders the whole reply once, and whose Stop stops it across workers."""
    a, b = two_workers
    args = {"a": a.url, "b": b.url, "graceMs": GRACE_S * 1000, "message": "hello react"}
    proc = await asyncio.create_subprocess_exec(
        _node(),
        str(CLIENT.parent / "aisdk_react.mjs"),
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    problems: list[str] = []
    async with aiohttp.ClientSession() as http:
        done = result["complete"]
        reply = await _reply(http, b.url, done["id"])
        problems += _check({**done, "kind": "complete", "messageId": done["replyId"],
                            "errors": [], "notes": {}}, reply)  # fmt: skip
        moved = result["reload"]
        reply = await _reply(http, a.url, moved["id"])
        if not moved["streamingAfterReload"]:
            problems.append(f"the first page's abort stopped a resumed reply: {moved}")
        if not moved["textBeforeStop"].startswith(moved["firstText"]):
            problems.append(f"the replay does not start as the first page did: {moved}")
        seen = {"errors": [], "notes": {"streamingAfterFirstStop": True}}
        problems += _check({**moved, **seen, "kind": "moved-stop", "messageId": moved["replyId"]},
                           reply)  # fmt: skip
    problems += log_problems("worker-a", a.log())
    problems += log_problems("worker-b", b.log())
    assert_none(problems)
