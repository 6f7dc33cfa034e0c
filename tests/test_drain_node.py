"""A rolling restart behind nginx, seen by the official socket.io-client under node.

Two real workers on one real redis-server behind Debian's nginx with the repo's
site config (deploy/nginx/chatsock.conf). The clients are plain socket.io-client
sockets with their own reconnection, resuming each stream on reconnect. The
worker holding them is sent SIGTERM mid-stream: it hands them off, nginx sends
their reconnects to the other worker (the draining one answers new handshakes
with 503), and every reply arrives whole, exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

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
from tests.support.nginx import Nginx
from tests.support.node import CLIENT, require_node
from tests.support.process import ROOT, Worker
from tests.support.redis_server import RedisServer
from tests.support.subprocesses import json_line

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

SCRIPT = CLIENT.parent / "drain.mjs"
COUNT = 6


async def _owner(redis_url: str, stream_id: str) -> str:
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.get(f"chatsock:stream:{stream_id}")
    finally:
        await client.aclose()
    assert raw is not None
    return str(orjson.loads(raw)["owner"])


@pytest.mark.parametrize("transports", [["websocket"], ["polling", "websocket"]])
async def test_sigterm_behind_nginx_loses_nothing_for_node_clients(
    private_redis_server: RedisServer, transports: list[str]
) -> None:
    common = {
        "REDIS_URL": private_redis_server.url,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "20",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "100",
        "CHATSOCK_SERVER__TRUSTED_PROXIES": '["127.0.0.1"]',
    }
    workers = {
        name: Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": name})
        for name in ("worker-a", "worker-b")
    }
    await asyncio.gather(*(asyncio.to_thread(w.start) for w in workers.values()))
    nginx = Nginx([w.port for w in workers.values()]).start()
    proc = await asyncio.create_subprocess_exec(
        require_node(),
        str(SCRIPT),
        nginx.url,
        json.dumps(
            {"count": COUNT, "message": "a long demo reply please", "transports": transports}
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        limit=2**24,  # the result is one JSON line with every event
    )
    try:
        ready = await json_line(proc, 40)
        assert ready.get("ready"), ready
        owners = {await _owner(private_redis_server.url, s) for s in ready["streams"]}
        assert len(owners) == 1, owners  # ip_hash: one client address, one worker
        leaving = workers[owners.pop()]
        staying = next(w for w in workers.values() if w is not leaving)
        t0 = time.monotonic()
        leaving.signal(signal.SIGTERM)
        result = await json_line(proc, 40)
        assert not result.get("timedOut"), result
        code = await asyncio.to_thread(leaving.wait, 60 + 5 + 1 + 30)
        assert code == 0, leaving.log()
        assert time.monotonic() - t0 < 60

        problems: list[str] = []
        async with aiohttp.ClientSession() as http:
            for tab in result["tabs"]:
                stream_id = tab["streamId"]
                view = seen([tuple(e) for e in tab["events"]], stream_id)
                tokens, clash = merge_tokens(stream_id, [view])
                problems += clash
                problems += check_follower(stream_id, view, start=1, must_end=True, tokens=tokens)
                if not tab["drained"]:
                    problems.append(f"{stream_id}: no server_draining")
                if not all(r["reply"].get("ok") for r in tab["resumes"]) or not (
                    tab["resumes"] or tab["endedBeforeDrain"] or tab["endedBeforeReconnect"]
                ):
                    problems.append(f"{stream_id}: resumes {tab['resumes']}")
                terminal = view.terminals[0] if view.terminals else None
                if terminal is None:
                    continue
                if terminal[0] != "chat_complete":
                    problems.append(f"{stream_id}: ended {terminal}")
                problems += check_text(stream_id, terminal, tokens)
                session_id = tab["ack"]["session_id"]
                async with http.get(f"{nginx.url}/api/chat/sessions/{session_id}") as reply:
                    messages = (await reply.json())["messages"]
                problems += check_persisted(stream_id, messages, tab["ack"]["message_id"], terminal)
            problems += await worker_problems(http, staying.url)
        if not any(tab["resumes"] for tab in result["tabs"]):
            problems.append("no tab was handed off: none resumed on the other worker")
        problems += log_problems("leaving", leaving.log())
        problems += log_problems("staying", staying.log())
        assert_none(problems)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        nginx.stop()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers.values()))
