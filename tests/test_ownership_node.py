"""Ownership with the official socket.io-client under node, across two real
workers on one Redis: tokens in `io(url, {auth: {token}})`, refusals as
`connect_error`, another user's ids `not_found`, and `auth_expired`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest

from tests.support.node import ROOT, require_node
from tests.support.process import Worker

pytestmark = [pytest.mark.node, pytest.mark.redis]

SECRET = "node-test-secret-0123456789-0123456789"
MISSING_SESSION = "ses_nosuchsession0000000"
MISSING_STREAM = "st_nosuchstream00000000"


def token(sub: str, ttl: float = 600, key: str = SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + int(ttl)}, key, "HS256")


@pytest.fixture
def workers(redis_url: str) -> Iterator[list[Worker]]:
    env = {
        "REDIS_URL": redis_url,
        "CHATSOCK_AUTH__MODE": "jwt",
        "CHATSOCK_JWT_SECRET": SECRET,
        # ~100 pieces at 30 a second: the stream runs ~3 s, the probes take a fraction.
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "30",
    }
    made = [Worker(env=env), Worker(env=env)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Worker.start, made))
        yield made
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Worker.stop, made))


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
            "missingSession": MISSING_SESSION,
            "missingStream": MISSING_STREAM,
        }
    )
    refused = result["refused"]
    assert refused["missing"]["ok"] is False
    assert "missing" in refused["missing"]["message"]
    assert "expired" in refused["expired"]["message"]
    assert "signature" in refused["forged"]["message"]
    for name in ("missing", "expired", "forged"):
        assert refused[name]["data"] == {"code": "unauthorized"}, name

    # Bob, on the other worker, gets for alice's ids what a missing id gets.
    ack, probes = result["ack"], result["probes"]
    session_id, stream_id = ack["session_id"], ack["stream_id"]
    assert ack["ok"]
    for name in ("join", "resume", "stop", "into"):
        assert probes[name]["ok"] is False, name
        assert probes[name]["error"]["code"] == "not_found", name
    for name, real, missing in [
        ("Join", session_id, MISSING_SESSION),
        ("Resume", stream_id, MISSING_STREAM),
        ("Stop", stream_id, MISSING_STREAM),
    ]:
        answer = json.dumps(probes[name.lower()]).replace(real, missing)
        assert answer == json.dumps(probes[f"missing{name}"]), name
    fetches = result["fetches"]
    for name, real, missing in [
        ("session", session_id, MISSING_SESSION),
        ("stream", stream_id, MISSING_STREAM),
    ]:
        assert fetches[name]["status"] == 404, fetches[name]
        got = {**fetches[name], "body": fetches[name]["body"].replace(real, missing)}
        assert got == fetches[f"missing{name.capitalize()}"], name
    assert fetches["list"]["status"] == 200
    assert session_id not in fetches["list"]["body"]
    assert result["stillRunning"], "alice's stream ended before bob's probes did"
    assert result["bobEvents"] == []  # not one of alice's events reached bob

    # Alice's stream ran to its end untouched, and she followed it from either worker.
    event, end = result["end"]
    assert event == "chat_complete"
    assert end["stopped"] is False  # bob's stop did nothing
    tokens = result["aliceTokens"]
    assert [t["seq"] for t in tokens] == list(range(1, len(tokens) + 1))
    assert end["full_response"] == "".join(t["token"] for t in tokens)
    assert result["resumed"]["ok"], result["resumed"]
    assert result["endTwo"] == result["end"]
    assert result["aliceTwoTokens"] == tokens
    stored = json.loads(result["aliceSession"]["body"])
    assert [m["content"] for m in stored["messages"]] == [
        "alice's secret question",
        end["full_response"],
    ]

    # A token expiring while connected: told why, then disconnected by the server.
    assert result["shortConnect"] == {"ok": True}
    assert ["auth_expired", {"code": "unauthorized", "reason": "token expired"}] in result[
        "expiredEvents"
    ]
    assert result["disconnectReason"] == "io server disconnect"
