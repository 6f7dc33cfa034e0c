"""What a client may choose (docs/security.md): each attack of issue 9 that chose
for the operator is refused naming the field, over Socket.IO and HTTP, and a
refused request leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import RUNNER, STORE
from tests.conftest import ServerFactory, url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient


@pytest.fixture
async def served(
    start_server: ServerFactory, fake_provider: ScriptedProvider
) -> AsyncIterator[tuple[TestServer, RecordingClient, aiohttp.ClientSession]]:
    server = await start_server(chain=["fake"], providers={"fake": fake_provider})
    client = await RecordingClient().connect(url_of(server))
    async with aiohttp.ClientSession() as http:
        yield server, client, http
    await client.close()


ATTACKS: list[tuple[str, dict[str, Any], str]] = [
    ("a provider outside the chain", {"provider": "demo"}, "provider: 'demo' is not offered"),
    ("a model nobody offered", {"model": "o1-pro"}, "model: 'o1-pro' is not offered"),
    ("a million output tokens", {"max_tokens": 1_000_000}, "max_tokens: at most 4096"),
    (
        "a 980,000-character history",
        {"history": [{"role": "user", "content": "x" * 9_800}] * 100},
        "history: the prompt",
    ),
]


@pytest.mark.parametrize(("name", "fields", "says"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_a_client_cannot_choose_for_the_operator(
    served: tuple[TestServer, RecordingClient, aiohttp.ClientSession],
    fake_provider: ScriptedProvider,
    name: str,
    fields: dict[str, Any],
    says: str,
) -> None:
    server, client, http = served
    request = {"message": "hi", **fields}
    ack = await client.call("chat_stream", request)
    assert ack["ok"] is False
    assert ack["error"]["code"] == "invalid_request"
    assert ack["error"]["message"].startswith(says), ack
    async with http.post(f"{url_of(server)}/api/chat/stream", json=request) as response:
        assert response.status == 400
        assert (await response.json())["error"]["message"].startswith(says)
    assert fake_provider.requests == []  # nothing went upstream
    assert await server.app[STORE].list_sessions() == []  # nothing stored


async def test_the_configured_model_may_be_named_and_max_tokens_defaults_to_the_cap(
    served: tuple[TestServer, RecordingClient, aiohttp.ClientSession],
    fake_provider: ScriptedProvider,
) -> None:
    _, client, _ = served
    ack = await client.call("chat_stream", {"message": "hi", "model": "fake-1"})
    assert ack["ok"], ack
    await client.wait_terminal(ack["stream_id"])
    ack = await client.call("chat_stream", {"message": "again", "max_tokens": 100})
    await client.wait_terminal(ack["stream_id"])
    assert [r.max_tokens for r in fake_provider.requests] == [4096, 100]


async def test_an_operator_can_lock_the_system_prompt_and_the_history(
    start_server: ServerFactory, fake_provider: ScriptedProvider
) -> None:
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider},
        limits={"allow_system_prompt": False, "allow_client_history": False},
    )  # fmt: skip
    client = await RecordingClient().connect(url_of(server))
    try:
        locked = await client.call("chat_stream", {"message": "hi", "system_prompt": "obey"})
        assert locked["error"]["message"].startswith("system_prompt: not allowed")
        history = [{"role": "user", "content": "earlier"}]
        locked = await client.call("chat_stream", {"message": "hi", "history": history})
        assert locked["error"]["message"].startswith("history: not allowed")
        ack = await client.call("chat_stream", {"message": "plain"})
        assert ack["ok"], ack
        await client.wait_terminal(ack["stream_id"])
    finally:
        await client.close()


async def test_the_stored_history_sent_upstream_fits_the_prompt_budget(
    start_server: ServerFactory, fake_provider: ScriptedProvider
) -> None:
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, limits={"max_prompt_chars": 1000}
    )
    client = await RecordingClient().connect(url_of(server))
    try:
        session_id = None
        for n in range(6):
            fake_provider.enqueue("r" * 150)
            request: dict[str, Any] = {"message": f"{n}" * 150}
            if session_id:
                request["session_id"] = session_id
            ack = await client.call("chat_stream", request)
            session_id = ack["session_id"]
            await client.wait_terminal(ack["stream_id"])
        last = fake_provider.requests[-1]
        assert sum(len(m.content) for m in last.messages) <= 1000
        assert last.messages[-1].content == "5" * 150  # the newest kept, the oldest dropped
        assert last.messages[0].content != "0" * 150
    finally:
        await client.close()


async def test_many_clients_mixing_allowed_and_refused_requests(
    start_server: ServerFactory, fake_provider: ScriptedProvider
) -> None:
    """Twenty clients at once, half asking for what is refused: each gets its own
    answer, refused requests hold no slot, store nothing and leave no task."""
    server = await start_server(chain=["fake"], providers={"fake": fake_provider})
    clients = [await RecordingClient().connect(url_of(server)) for _ in range(20)]
    try:
        requests = [
            {"message": f"ok {n}"} if n % 2 == 0 else {"message": f"bad {n}", "model": "o1-pro"}
            for n in range(20)
        ]
        acks = await asyncio.gather(
            *(c.call("chat_stream", r) for c, r in zip(clients, requests, strict=True))
        )
        for n, ack in enumerate(acks):
            assert ack["ok"] is (n % 2 == 0), ack
        ends = await asyncio.gather(
            *(clients[n].wait_terminal(acks[n]["stream_id"]) for n in range(0, 20, 2))
        )
        assert {event for event, _ in ends} == {"chat_complete"}
        assert len(fake_provider.requests) == 10
        assert len(await server.app[STORE].list_sessions()) == 10
        assert await server.app[STORE].active_streams() == []
        assert not server.app[RUNNER].streams
    finally:
        for client in clients:
            await client.close()
