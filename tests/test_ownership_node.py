"""Ownership with the official socket.io-client under node, across two real
workers on one Redis: tokens in `io(url, {auth: {token}})`, refusals as
`connect_error`, another user's ids `not_found`, and `auth_expired`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.support.node import ROOT, require_node
from tests.support.process import Worker

pytestmark = [pytest.mark.node, pytest.mark.redis]

SECRET = "node-test-secret-0123456789-0123456789"


def token(sub: str, ttl: float = 600, key: str = SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + int(ttl)}, key, "HS256")


@pytest.fixture
def workers(redis_url: str) -> Iterator[list[Worker]]:
    env = {
        "REDIS_URL": redis_url,
        "CHATSOCK_AUTH__MODE": "jwt",
        "CHATSOCK_JWT_SECRET": SECRET,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "60",
    }
    started = [Worker(env=env).start(), Worker(env=env).start()]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


async def run(args: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        require_node(), str(ROOT / "tests" / "js" / "two_users.mjs"), json.dumps(args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_two_users_on_two_workers_with_the_node_client(workers: list[Worker]) -> None:
    result = await run(
        {
            "aliceUrl": workers[0].url,
            "bobUrl": workers[1].url,
            "alice": token("alice"),
            "bob": token("bob"),
            "expired": token("alice", ttl=-60),
            "forged": token("alice", key="not-the-secret-" * 3),
            "shortLived": token("alice", ttl=3),
        }
    )
    refused = result["refused"]
    assert refused["missing"]["ok"] is False
    assert "missing" in refused["missing"]["message"]
    assert "expired" in refused["expired"]["message"]
    assert "signature" in refused["forged"]["message"]
    assert refused["forged"]["data"] == {"code": "unauthorized"}

    ack, probes = result["ack"], result["probes"]
    assert ack["ok"]
    for name in ("join", "resume", "stop", "into"):
        assert probes[name]["ok"] is False, name
        assert probes[name]["error"]["code"] == "not_found", name
    missing = probes["missingJoin"]["error"]["message"]
    assert probes["join"]["error"]["message"].replace(ack["session_id"], "missing-session") == (
        missing
    )
    event, end = result["end"]
    assert event == "chat_complete"
    assert end["stopped"] is False  # bob's stop did nothing
    assert end["full_response"] == "".join(d["token"] for _, d in result["aliceTokens"])
    assert result["bobEvents"] == []  # not one of alice's events reached bob
    assert result["shortConnect"] == {"ok": True}
    assert ["auth_expired", {"code": "unauthorized", "reason": "token expired"}] in result[
        "expiredEvents"
    ]
    assert result["disconnectReason"] == "io server disconnect"
