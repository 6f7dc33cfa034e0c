"""Ownership in the jwt mode: another user's session or stream is `not_found` over
Socket.IO and HTTP, exactly as a missing one, and nothing of it changes.

User A holds a stream open (a gated scripted provider); user B tries every
operation on A's session and stream. Each answer must equal the answer for an
id that does not exist, and afterwards A's history, stream and room are as
they were: A's reply completes, B never received a token of it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest
import socketio
from aiohttp.test_utils import TestServer

from tests.conftest import ServerFactory, url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient

SECRET = "test-secret-0123456789-0123456789-abcdef"


def token(sub: str, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600, **claims}, SECRET, "HS256")


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


@pytest.fixture
async def jwt_server(start_server: ServerFactory, fake_provider: ScriptedProvider) -> TestServer:
    return await start_server(
        chain=["fake"],
        providers={"fake": fake_provider},
        auth={"mode": "jwt", "jwt_secret": SECRET, "admin_claim": "role=admin"},
        limits={"max_streams_per_session": 2},
    )


async def as_user(server: TestServer, sub: str, made: list[RecordingClient]) -> RecordingClient:
    client = await RecordingClient().connect(url_of(server), auth={"token": token(sub)})
    made.append(client)
    return client


async def test_another_users_session_and_stream_are_not_found_over_socketio(
    jwt_server: TestServer, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    alice = await as_user(jwt_server, "alice", clients)
    bob = await as_user(jwt_server, "bob", clients)
    script = fake_provider.enqueue("secret ")
    gate = script.gate()
    script.text("reply")
    ack = await alice.call("chat_stream", {"message": "alice's private question"})
    assert ack["ok"], ack
    session_id, stream_id = ack["session_id"], ack["stream_id"]
    await alice.wait_event("chat_token", stream_id)

    for event, data, missing in [
        ("session_join", {"session_id": session_id}, {"session_id": "MISSING"}),
        ("chat_resume", {"stream_id": stream_id}, {"stream_id": "MISSING"}),
        ("chat_stop", {"stream_id": stream_id}, {"stream_id": "MISSING"}),
    ]:
        answer = await bob.call(event, data)
        expected = await bob.call(event, missing)
        assert answer["ok"] is False, (event, answer)
        assert answer["error"]["code"] == "not_found", (event, answer)
        real = session_id if "session_id" in data else stream_id
        assert str(answer).replace(real, "MISSING") == str(expected), event
    into = await bob.call("chat_stream", {"message": "bob writes", "session_id": session_id})
    assert into["ok"] is False
    assert into["error"]["code"] == "not_found"

    gate.set()
    event, end = await alice.wait_terminal(stream_id)
    assert event == "chat_complete"
    assert end["full_response"] == "secret reply"
    assert bob.of("chat_token") == []
    assert bob.of("chat_complete") == []
    joined = await alice.call("session_join", {"session_id": session_id})
    assert [m["content"] for m in joined["messages"]] == [
        "alice's private question",
        "secret reply",
    ]


async def test_another_users_resources_are_not_found_over_http(
    jwt_server: TestServer,
    fake_provider: ScriptedProvider,
    http: aiohttp.ClientSession,
) -> None:
    base = url_of(jwt_server)
    script = fake_provider.enqueue("secret ")
    gate = script.gate()
    script.text("reply")
    started = await http.post(
        f"{base}/api/chat/stream",
        json={"message": "alice's question"},
        headers={**bearer("alice"), "Accept": "text/event-stream"},
    )
    session_id = started.headers["X-Session-Id"]
    stream_id = started.headers["X-Stream-Id"]
    bob = bearer("bob")

    async def answer(method: str, path: str, **kw: Any) -> tuple[int, str]:
        async with http.request(method, f"{base}{path}", headers=bob, **kw) as response:
            return response.status, await response.text()

    for method, path, kw in [
        ("GET", f"/api/chat/stream/{stream_id}", {}),
        ("POST", "/api/chat/stream/stop", {"json": {"stream_id": stream_id}}),
        ("GET", f"/api/chat/sessions/{session_id}", {}),
        ("DELETE", f"/api/chat/sessions/{session_id}", {}),
    ]:
        real = session_id if session_id in path or "session_id" in str(kw) else stream_id
        status, body = await answer(method, path, **kw)
        missing_kw = {
            key: {k: ("MISSING" if k.endswith("_id") else v) for k, v in value.items()}
            for key, value in kw.items()
        }
        missing = await answer(method, path.replace(real, "MISSING"), **missing_kw)
        assert status == 404, (method, path, body)
        assert (status, body.replace(real, "MISSING")) == missing, (method, path)

    # Writing into it is refused as well (a missing id would create a new session).
    into = {"message": "x", "session_id": session_id}
    status, body = await answer("POST", "/api/chat/stream", json=into)
    assert status == 404
    assert "not_found" in body
    status, listed = await answer("GET", "/api/chat/sessions")
    assert status == 200
    assert session_id not in listed
    status, active = await answer("GET", "/api/chat/stream/active")
    assert status == 200
    assert stream_id not in active
    status, active = await answer("GET", f"/api/chat/stream/active?session_id={session_id}")
    assert status == 200
    assert stream_id not in active
    status, everyone = await answer("GET", "/api/chat/sessions?all=1")  # not an admin
    assert session_id not in everyone

    gate.set()
    text = await started.text()
    assert "secret " in text
    assert "chat_complete" in text
    started.release()
    async with http.get(f"{base}/api/chat/sessions/{session_id}", headers=bearer("alice")) as r:
        view = await r.json()
    assert [m["content"] for m in view["messages"]] == ["alice's question", "secret reply"]
    async with http.get(f"{base}/api/chat/sessions", headers=bearer("alice")) as r:
        assert session_id in await r.text()
    admin = bearer("root", role="admin")
    async with http.get(f"{base}/api/chat/sessions?all=1", headers=admin) as r:
        assert session_id in await r.text()


async def test_many_users_at_once_each_see_only_their_own(
    jwt_server: TestServer, fake_provider: ScriptedProvider, clients: list[RecordingClient]
) -> None:
    """Twelve users stream at once, each also probing everyone else's ids."""
    users = [f"user{n}" for n in range(12)]
    for n in range(len(users)):
        fake_provider.enqueue(f"reply-{n}-a ", f"reply-{n}-b")
    socks = await asyncio.gather(*(as_user(jwt_server, u, clients) for u in users))
    acks = await asyncio.gather(
        *(s.call("chat_stream", {"message": f"q {u}"}) for s, u in zip(socks, users, strict=True))
    )
    assert all(a["ok"] for a in acks), acks
    ends = await asyncio.gather(
        *(s.wait_terminal(a["stream_id"]) for s, a in zip(socks, acks, strict=True))
    )
    assert all(event == "chat_complete" for event, _ in ends)

    async def probe(n: int) -> None:
        for m, other in enumerate(acks):
            if m == n:
                continue
            join = await socks[n].call("session_join", {"session_id": other["session_id"]})
            resume = await socks[n].call("chat_resume", {"stream_id": other["stream_id"]})
            assert join["error"]["code"] == "not_found"
            assert resume["error"]["code"] == "not_found"

    await asyncio.gather(*(probe(n) for n in range(len(users))))
    for n, sock in enumerate(socks):
        mine = {acks[n]["stream_id"]}
        seen = {d["stream_id"] for e, d in sock.events if isinstance(d, dict) and "stream_id" in d}
        assert seen == mine, (n, seen)


async def test_connect_without_a_valid_token_is_refused_with_the_reason(
    jwt_server: TestServer,
) -> None:
    url = url_of(jwt_server)
    expired = jwt.encode({"sub": "a", "exp": int(time.time()) - 60}, SECRET, "HS256")
    forged = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, "wrong-secret" * 4, "HS256")
    for auth, reason in [(None, "missing"), ({"token": expired}, "expired"),
                         ({"token": forged}, "signature")]:  # fmt: skip
        client = RecordingClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(url, auth=auth)
        await client.close()
        [error] = client.connect_errors
        assert reason in error["message"]
        assert error["data"] == {"code": "unauthorized"}


async def test_http_without_a_valid_token_is_401_with_a_bearer_challenge(
    jwt_server: TestServer, http: aiohttp.ClientSession
) -> None:
    base = url_of(jwt_server)
    for headers in [{}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic eDp5"}]:
        async with http.get(f"{base}/api/chat/sessions", headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            body = await response.json()
            assert body["error"]["code"] == "unauthorized"
    for path in ("/healthz", "/readyz"):  # probes need no token
        async with http.get(f"{base}{path}") as response:
            assert response.status == 200


async def test_a_socket_is_disconnected_when_its_token_expires(
    jwt_server: TestServer,
) -> None:
    soon = jwt.encode({"sub": "alice", "exp": int(time.time()) + 2}, SECRET, "HS256")
    client = await RecordingClient().connect(url_of(jwt_server), auth={"token": soon})
    try:
        expired = await client.wait_event("auth_expired", within=10)
        assert expired["code"] == "unauthorized"
        await asyncio.wait_for(client.disconnected.wait(), 10)
    finally:
        await client.close()
