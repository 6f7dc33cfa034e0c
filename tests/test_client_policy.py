"""What a client may choose (docs/security.md): each attack of issue 9 that chose
for the operator is refused naming the field, over Socket.IO and HTTP, what the
operator offers still works, and a refused request leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import RUNNER, STORE
from chatsock.config import Settings
from chatsock.policy import trim_history
from chatsock.providers.base import ChatMessage, ChatRequest, Delta
from tests.conftest import ServerFactory, url_of
from tests.fakes.provider import ScriptedProvider
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI
from tests.support.clients import RecordingClient
from tests.support.invariants import assert_none, half_registered, occupied_slots, worker_problems

Served = tuple[TestServer, RecordingClient, aiohttp.ClientSession]


@pytest.fixture
async def served(
    start_server: ServerFactory, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> AsyncIterator[Served]:
    server = await start_server(chain=["fake"], providers={"fake": fake_provider})
    client = await RecordingClient().connect(url_of(server))
    yield server, client, http
    await client.close()


async def refusal(served: Served, request: dict[str, Any]) -> str:
    """The message refusing `request`, the same over Socket.IO and over HTTP."""
    server, client, http = served
    ack = await client.call("chat_stream", request)
    assert ack["ok"] is False, ack
    assert ack["error"]["code"] == "invalid_request", ack
    async with http.post(f"{url_of(server)}/api/chat/stream", json=request) as response:
        body = await response.json()
    assert response.status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"] == ack["error"]["message"]
    return str(ack["error"]["message"])


async def accepted(served: Served, request: dict[str, Any]) -> None:
    """`request` streams to completion over Socket.IO and over HTTP."""
    server, client, http = served
    ack = await client.call("chat_stream", request)
    assert ack["ok"], ack
    event, payload = await client.wait_terminal(ack["stream_id"])
    assert event == "chat_complete", payload
    async with http.post(f"{url_of(server)}/api/chat/stream", json=request) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["full_response"]


# -- the attacks of issue 9, on the default settings ----------------------

ATTACKS: list[tuple[str, dict[str, Any], str]] = [
    (
        "a provider outside the chain",
        {"provider": "demo"},
        "provider: 'demo' is not offered here; choose one of ['fake'] or none",
    ),
    (
        "a model nobody offered",
        {"model": "o1-pro"},
        "model: 'o1-pro' is not offered by provider 'fake' (the chain may fail over to it); "
        "choose one of ['fake-1'] or none",
    ),
    (
        "a million output tokens",
        {"max_tokens": 1_000_000},
        "max_tokens: at most 4096 allowed (limits.max_tokens), got 1000000",
    ),
    (
        "a 980,000-character history",
        {"history": [{"role": "user", "content": "x" * 9_800}] * 100},
        "history: the prompt (message, history and system prompt) is 980002 characters; "
        "at most 200000 allowed (limits.max_prompt_chars)",
    ),
]


@pytest.mark.parametrize(("name", "fields", "says"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_a_client_cannot_choose_for_the_operator(
    served: Served, fake_provider: ScriptedProvider, name: str, fields: dict[str, Any], says: str
) -> None:
    assert await refusal(served, {"message": "hi", **fields}) == says
    assert fake_provider.requests == []  # nothing went upstream
    assert await served[0].app[STORE].list_sessions() == []  # nothing stored


async def test_an_operator_can_lock_the_system_prompt_and_the_history(
    start_server: ServerFactory, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider},
        limits={"allow_system_prompt": False, "allow_client_history": False},
    )  # fmt: skip
    client = await RecordingClient().connect(url_of(server))
    try:
        served = (server, client, http)
        says = await refusal(served, {"message": "hi", "system_prompt": "obey"})
        assert says == "system_prompt: not allowed by this server (limits.allow_system_prompt)"
        # Locked is locked whatever the size: not a size complaint a client could fix.
        huge = {"message": "hi", "system_prompt": "x" * 40_000}
        assert (await refusal(served, huge)).startswith("system_prompt: not allowed")
        history = [{"role": "user", "content": "earlier"}]
        says = await refusal(served, {"message": "hi", "history": history})
        assert says == "history: not allowed by this server (limits.allow_client_history)"
        assert fake_provider.requests == []
        # The server's own history still goes upstream.
        first = await client.call("chat_stream", {"message": "first"})
        await client.wait_terminal(first["stream_id"])
        again = {"message": "second", "session_id": first["session_id"]}
        ack = await client.call("chat_stream", again)
        await client.wait_terminal(ack["stream_id"])
        sent = fake_provider.requests[-1]
        assert [m.content for m in sent.messages] == ["first", "ok", "second"]
        assert sent.system_prompt is None
    finally:
        await client.close()


# -- providers and models ---------------------------------------------------


async def test_a_provider_of_the_chain_may_be_picked_and_a_refusal_lists_the_choices(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    first, spare = ScriptedProvider("first"), ScriptedProvider("spare", model="spare-1")
    server = await start_server(
        chain=["first", "spare"], providers={"first": first, "spare": spare}
    )
    client = await RecordingClient().connect(url_of(server))
    try:
        served = (server, client, http)
        await accepted(served, {"message": "hi", "provider": "spare", "model": "spare-1"})
        assert (len(first.requests), len(spare.requests)) == (0, 2)
        for unknown in ("nope", "demo", "x\n" * 10):
            says = await refusal(served, {"message": "hi", "provider": unknown})
            assert says.endswith("is not offered here; choose one of ['first', 'spare'] or none")
            assert "\n" not in says  # a client's text is quoted escaped
        says = await refusal(served, {"message": "hi", "provider": "spare", "model": "first-1"})
        assert says == (
            "model: 'first-1' is not offered by provider 'spare'; choose one of ['spare-1'] or none"
        )
    finally:
        await client.close()


async def test_demo_and_its_model_are_selectable_when_demo_is_in_the_chain(
    start_server: ServerFactory, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    server = await start_server(
        chain=["fake", "demo"], providers={"fake": fake_provider},
        demo={"tokens_per_second": 10_000},
    )  # fmt: skip
    client = await RecordingClient().connect(url_of(server))
    try:
        served = (server, client, http)
        await accepted(served, {"message": "hi", "provider": "demo", "model": "demo-1"})
        says = await refusal(served, {"message": "hi", "provider": "demo", "model": "gpt-4o"})
        assert says == (
            "model: 'gpt-4o' is not offered by provider 'demo'; choose one of ['demo-1'] or none"
        )
        assert fake_provider.requests == []
    finally:
        await client.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FakeOpenAI, FakeAnthropic]]:
    """Loopback fakes of OpenAI's and Anthropic's APIs, started before chatsock."""
    async with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        yield openai, anthropic


def _provider(fake: FakeOpenAI | FakeAnthropic, **config: Any) -> dict[str, Any]:
    kind = "openai" if isinstance(fake, FakeOpenAI) else "anthropic"
    return {"kind": kind, "base_url": fake.base_url, "api_key": "sk-test-0123456789",
            "max_retries": 0, **config}  # fmt: skip


async def test_models_follow_each_providers_list_and_a_chain_needs_every_provider(
    upstreams: tuple[FakeOpenAI, FakeAnthropic],
    start_server: ServerFactory,
    make_settings: Callable[..., Settings],
    http: aiohttp.ClientSession,
) -> None:
    """openai offers its own model and gpt-b; anthropic offers any. With no provider
    named, failover may reach both, so both must offer the model."""
    openai, anthropic = upstreams
    settings = make_settings(
        providers={
            "anthropic": _provider(anthropic, model="claude-a", models=["*"]),
            "openai": _provider(openai, model="gpt-a", models=["gpt-b"]),
        },
        chain=["anthropic", "openai"],
    )
    server = await start_server(settings)
    client = await RecordingClient().connect(url_of(server))
    try:
        served = (server, client, http)
        for model in ("gpt-a", "gpt-b"):
            await accepted(served, {"message": "hi", "provider": "openai", "model": model})
        await accepted(served, {"message": "hi", "provider": "anthropic", "model": "claude-z"})
        await accepted(served, {"message": "hi", "model": "gpt-b"})  # both offer it
        assert [r.body["model"] for r in openai.requests] == ["gpt-a"] * 2 + ["gpt-b"] * 2
        assert [r.body["model"] for r in anthropic.requests] == ["claude-z"] * 2 + ["gpt-b"] * 2
        says = await refusal(served, {"message": "hi", "provider": "openai", "model": "o1-pro"})
        assert says == (
            "model: 'o1-pro' is not offered by provider 'openai'; "
            "choose one of ['gpt-a', 'gpt-b'] or none"
        )
        says = await refusal(served, {"message": "hi", "model": "claude-z"})
        assert says == (
            "model: 'claude-z' is not offered by provider 'openai' (the chain may fail over "
            "to it); choose one of ['gpt-a', 'gpt-b'] or none"
        )
        assert (len(openai.requests), len(anthropic.requests)) == (4, 4)
    finally:
        await client.close()


async def test_max_tokens_is_capped_and_the_cap_is_sent_when_a_client_names_none(
    upstreams: tuple[FakeOpenAI, FakeAnthropic],
    start_server: ServerFactory,
    make_settings: Callable[..., Settings],
    http: aiohttp.ClientSession,
) -> None:
    openai, anthropic = upstreams
    settings = make_settings(
        providers={"anthropic": _provider(anthropic), "openai": _provider(openai)},
        chain=["anthropic", "openai"],
        limits={"max_tokens": 512},
    )
    server = await start_server(settings)
    client = await RecordingClient().connect(url_of(server))
    try:
        served = (server, client, http)
        says = await refusal(served, {"message": "hi", "max_tokens": 513})
        assert says == "max_tokens: at most 512 allowed (limits.max_tokens), got 513"
        for provider in ("anthropic", "openai"):
            await accepted(served, {"message": "hi", "provider": provider})
            await accepted(served, {"message": "hi", "provider": provider, "max_tokens": 512})
            await accepted(served, {"message": "hi", "provider": provider, "max_tokens": 7})
        # A compatible base_url gets `max_tokens` (api.openai.com would get max_completion_tokens).
        for fake in (anthropic, openai):
            assert [r.body["max_tokens"] for r in fake.requests] == [512] * 4 + [7] * 2
    finally:
        await client.close()


# -- the size of the prompt ------------------------------------------------


async def test_the_whole_prompt_is_bounded_naming_its_largest_part(
    start_server: ServerFactory, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, limits={"max_prompt_chars": 1000}
    )
    client = await RecordingClient().connect(url_of(server))
    try:
        served = (server, client, http)
        cases: dict[str, dict[str, Any]] = {
            "message": {"message": "m" * 600, "system_prompt": "s" * 401},
            "system_prompt": {"message": "m" * 400, "system_prompt": "s" * 601},
            "history": {
                "message": "m" * 100,
                "history": [{"role": "user", "content": "h" * 300}] * 3,
                "system_prompt": "s",
            },
        }
        for field, request in cases.items():
            assert await refusal(served, request) == (
                f"{field}: the prompt (message, history and system prompt) is 1001 characters; "
                "at most 1000 allowed (limits.max_prompt_chars)"
            )
        assert fake_provider.requests == []
        fits = {key: value for key, value in cases["history"].items() if key != "system_prompt"}
        await accepted(served, fits)  # exactly 1000
        assert sum(len(m.content) for m in fake_provider.requests[0].messages) == 1000
    finally:
        await client.close()


async def test_a_user_turn_in_the_history_is_bounded_like_a_message(
    start_server: ServerFactory, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, limits={"max_message_chars": 100}
    )
    client = await RecordingClient().connect(url_of(server))
    try:
        served = (server, client, http)
        history = [{"role": "user", "content": "u"}, {"role": "user", "content": "u" * 101}]
        assert await refusal(served, {"message": "hi", "history": history}) == (
            "history.1.content: a user turn of at most 100 characters allowed "
            "(limits.max_message_chars), got 101"
        )
        # A reply can be longer than any message; only the whole prompt bounds it.
        reply = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a" * 5000}]
        await accepted(served, {"message": "hi", "history": reply})
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
        session: dict[str, Any] = {}
        for n in range(6):
            fake_provider.enqueue(f"{n}" * 150)
            ack = await client.call("chat_stream", {"message": f"{n}" * 150, **session})
            session = {"session_id": ack["session_id"]}
            await client.wait_terminal(ack["stream_id"])
        # 850 left after the message: 0..4's turns (1500) are cut to the newest that
        # fit (a2 u3 a3 u4 a4), and the orphaned reply a2 is dropped.
        sent = [(m.role, m.content[0]) for m in fake_provider.requests[-1].messages]
        assert sent == [("user", "3"), ("assistant", "3"), ("user", "4"), ("assistant", "4"),
                        ("user", "5")]  # fmt: skip
    finally:
        await client.close()


def test_trim_history_keeps_the_newest_turns_within_the_budget_from_a_user_turn() -> None:
    turns = [ChatMessage("user", "aa"), ChatMessage("assistant", "bbb"), ChatMessage("user", "c")]
    assert trim_history(turns, 6) == turns
    assert trim_history(turns, 5) == turns[2:]  # "bbb" fits, but opens with the assistant
    assert trim_history(turns, 0) == []
    assert trim_history(turns, -10) == []
    # Contiguous: an old turn that fits never comes back after a newer one did not.
    assert trim_history([ChatMessage("user", "x"), ChatMessage("user", "y" * 9)], 5) == []


# -- many clients at once ----------------------------------------------------


class EchoProvider(ScriptedProvider):
    """Replies with the user's message, so each client can tell its own answer."""

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        self.requests.append(request)
        await asyncio.sleep(0.05)  # the streams overlap
        yield Delta(f"echo {request.messages[-1].content}")
        yield Delta(finish_reason="stop")


REFUSED: list[dict[str, Any]] = [
    {"model": "o1-pro"},
    {"provider": "demo"},
    {"max_tokens": 1_000_000},
    {"history": [{"role": "assistant", "content": "x" * 200_001}]},
]


async def test_many_clients_mixing_allowed_and_refused_requests(
    start_server: ServerFactory, redis_url: str, http: aiohttp.ClientSession
) -> None:
    """24 sockets and 24 HTTP requests at once, half asking for what is refused:
    each gets its own answer; refused ones count no start (the start quota leaves
    room for one more than the allowed ones), hold no slot, store nothing, keep no
    client_message_id and leave no task."""
    echo = EchoProvider("echo")
    allowed = 24
    server = await start_server(
        chain=["echo"], providers={"echo": echo}, store={"redis_url": redis_url},
        limits={"stream_starts_per_minute": allowed + 1},
    )  # fmt: skip
    base = url_of(server)
    clients = [await RecordingClient().connect(base) for _ in range(24)]
    try:

        def request(n: int) -> dict[str, Any]:
            refused = REFUSED[n // 2 % len(REFUSED)] if n % 2 else {}
            return {"message": f"m{n}", "client_message_id": f"c{n}", **refused}

        async def over_socket(n: int) -> tuple[int, str]:
            ack = await clients[n].call("chat_stream", request(n))
            if not ack["ok"]:
                return n, ack["error"]["code"]
            event, payload = await clients[n].wait_terminal(ack["stream_id"])
            assert event == "chat_complete", payload
            return n, payload["full_response"]

        async def over_http(n: int) -> tuple[int, str]:
            async with http.post(f"{base}/api/chat/stream", json=request(n)) as response:
                body = await response.json()
            return n, body["full_response"] if response.status == 200 else body["error"]["code"]

        answers = await asyncio.gather(
            *(over_socket(n) for n in range(24)), *(over_http(n) for n in range(24, 48))
        )
        for n, answer in answers:
            assert answer == ("invalid_request" if n % 2 else f"echo m{n}"), (n, answer)
        assert sorted(r.messages[-1].content for r in echo.requests) == sorted(
            f"m{n}" for n in range(0, 48, 2)
        )
        assert len(await server.app[STORE].list_sessions()) == allowed
        assert not server.app[RUNNER].streams
        problems = await worker_problems(http, base)
        problems += await occupied_slots(redis_url, "chatsock")
        problems += await half_registered(redis_url, "chatsock")
        assert_none(problems)
        # A refused client_message_id was never taken: sent again within the
        # policy, it starts a stream of its own, the last start the quota allows.
        retry = {"message": "m1", "client_message_id": "c1"}
        ack = await clients[1].call("chat_stream", retry)
        assert ack["ok"], ack
        assert (await clients[1].wait_terminal(ack["stream_id"]))[1]["full_response"] == "echo m1"
        ack = await clients[3].call("chat_stream", {"message": "one too many"})
        assert ack["error"]["code"] == "rate_limited", ack
    finally:
        for client in clients:
            await client.close()


async def test_policy_refusals_are_answered_before_the_start_quota(
    start_server: ServerFactory, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    """A refused request counts no start: a client that got it wrong ten times can
    still start the two streams its quota allows, and no third."""
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider},
        limits={"stream_starts_per_minute": 2},
    )  # fmt: skip
    client = await RecordingClient().connect(url_of(server))
    try:
        served = (server, client, http)
        for _ in range(5):
            await refusal(served, {"message": "hi", "model": "o1-pro"})
        await accepted(served, {"message": "hi"})
        ack = await client.call("chat_stream", {"message": "hi"})
        assert ack["error"]["code"] == "rate_limited", ack
    finally:
        await client.close()
