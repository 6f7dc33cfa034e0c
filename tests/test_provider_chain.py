"""The real providers end to end: Socket.IO client -> chatsock -> SDK -> loopback fake upstream.

Every test builds OpenAIProvider / AnthropicProvider from config (no ready-made
provider objects, no mocks) and points them at FakeOpenAI / FakeAnthropic
(tests/fakes/upstream.py), which speak each API's wire format byte for byte.
What is pinned is what a client sees: silent failover before the first text
(HTTP errors, in-stream error events, resets), exact partials after it,
timeouts (reasoning counts as activity), content that is not text, stop
closing the upstream, usage and finish reasons, and provider selection by name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestServer

from tests.fakes.upstream import Ending, FakeAnthropic, FakeOpenAI, Reply, reasoning, thinking
from tests.support.clients import RecordingClient

MODEL = "fake-model"
KEY = "sk-test-0123456789abcdef"
Upstream = FakeOpenAI | FakeAnthropic
Fake = TypeVar("Fake", FakeOpenAI, FakeAnthropic)
Connect = Callable[[TestServer], Awaitable[RecordingClient]]


# -- helpers ---------------------------------------------------------------


@pytest.fixture
async def start_fake() -> AsyncIterator[Callable[[type[Fake]], Awaitable[Fake]]]:
    """`await start_fake(FakeOpenAI)`: a fake upstream on a loopback port, closed after the test.

    Request it before `start_server` so the fakes outlive chatsock's teardown.
    """
    started: list[Upstream] = []

    async def start(kind: type[Fake]) -> Fake:
        fake = kind()
        await fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in reversed(started):
        await fake.close()


def config_for(fake: Upstream, **overrides: Any) -> dict[str, Any]:
    """`[providers.<name>]` for a provider of the fake's kind pointed at it."""
    config: dict[str, Any] = {
        "kind": "anthropic" if isinstance(fake, FakeAnthropic) else "openai",
        "base_url": fake.base_url,
        "api_key": KEY,
        "model": MODEL,
        "max_retries": 0,
    }
    config.update(overrides)
    return config


async def chain_server(
    make_settings: Callable[..., Any],
    start_server: Callable[..., Awaitable[TestServer]],
    providers: dict[str, dict[str, Any]],
    chain: list[str],
) -> TestServer:
    return await start_server(make_settings(providers=providers, chain=chain))


async def run_stream(client: RecordingClient, **request: Any) -> tuple[str, Any, str]:
    """Start a stream; return its terminal event, payload, and the chat_token texts joined."""
    ack = await client.call("chat_stream", {"message": "hi", **request})
    assert ack.get("ok", True) is not False, ack
    event, payload = await client.wait_terminal(ack["stream_id"], within=20)
    tokens = "".join(t["token"] for t in client.tokens(ack["stream_id"]))
    return event, payload, tokens


def split_inside_multibyte(body: bytes, *chars: str) -> list[int]:
    """Offsets that cut `body` inside the UTF-8 encoding of each of `chars`."""
    cuts = []
    for char in chars:
        encoded = char.encode()
        assert len(encoded) > 1, char
        at = body.index(encoded)
        cuts.append(at + 1)
        cuts.append(at + len(encoded) - 1)
    return sorted(set(cuts))


# -- failover before the first delta ---------------------------------------


@pytest.mark.parametrize("status", [401, 429, 500])
async def test_http_error_before_streaming_fails_over_silently_to_the_next_provider(
    status: int,
    start_fake: Any,
    make_settings: Any,
    start_server: Any,
    connect: Connect,
) -> None:
    first: FakeOpenAI = await start_fake(FakeOpenAI)
    second: FakeAnthropic = await start_fake(FakeAnthropic)
    first.enqueue(Reply(status=status))
    second.enqueue(Reply(pieces=["from ", "second"]))
    server = await chain_server(
        make_settings,
        start_server,
        {"first": config_for(first), "second": config_for(second, model="claude-fake")},
        ["first", "second"],
    )
    client = await connect(server)
    event, done, tokens = await run_stream(client)
    assert event == "chat_complete"
    assert (done["provider"], done["model"]) == ("second", "claude-fake")
    assert done["full_response"] == tokens == "from second"
    assert not client.of("chat_stream_error")
    assert len(first.requests) == 1  # tried once (max_retries 0), then skipped
    assert first.requests[0].body["model"] == MODEL
    assert len(second.requests) == 1
    assert second.requests[0].body["model"] == "claude-fake"


async def test_every_provider_failing_is_provider_unavailable_naming_each_reason_without_keys(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    one: FakeOpenAI = await start_fake(FakeOpenAI)
    two: FakeAnthropic = await start_fake(FakeAnthropic)
    three: FakeOpenAI = await start_fake(FakeOpenAI)
    keys = {"one": "sk-one-SECRET-1111", "two": "sk-ant-SECRET-2222", "three": "sk-three-SECRET-3"}
    # Upstreams that echo the key back in their error message, as OpenAI's 401 does.
    one.enqueue(Reply(status=401, error_message=f"Incorrect API key provided: {keys['one']}"))
    two.enqueue(Reply(status=500, error_message=f"internal error for key {keys['two']}"))
    three.enqueue(Reply(status=429, error_message="Rate limit reached", retry_after="7"))
    server = await chain_server(
        make_settings,
        start_server,
        {
            name: config_for(fake, api_key=keys[name])
            for name, fake in (("one", one), ("two", two), ("three", three))
        },
        ["one", "two", "three"],
    )
    client = await connect(server)
    event, err, tokens = await run_stream(client)
    assert event == "chat_stream_error"
    assert err["code"] == "provider_unavailable"
    assert (err["partial"], tokens) == ("", "")
    message = err["error"]
    assert "one: HTTP 401" in message
    assert "two: HTTP 500" in message
    assert "three: HTTP 429" in message
    assert "Rate limit reached" in message
    for key in keys.values():
        assert key not in message
    assert "SECRET" not in message
    assert err["retryable"] is True  # the last provider answered 429 with Retry-After
    assert [len(f.requests) for f in (one, two, three)] == [1, 1, 1]


async def test_every_provider_failing_with_a_final_401_is_not_retryable(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    one: FakeOpenAI = await start_fake(FakeOpenAI)
    two: FakeOpenAI = await start_fake(FakeOpenAI)
    one.enqueue(Reply(status=429, retry_after="3"))
    two.enqueue(Reply(status=401, error_message="invalid x-api-key"))
    server = await chain_server(
        make_settings,
        start_server,
        {"one": config_for(one), "two": config_for(two)},
        ["one", "two"],
    )
    client = await connect(server)
    event, err, _ = await run_stream(client)
    assert (event, err["code"]) == ("chat_stream_error", "provider_unavailable")
    assert err["retryable"] is False


async def test_stall_before_the_first_byte_hits_first_token_timeout_and_fails_over(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    slow: FakeOpenAI = await start_fake(FakeOpenAI)
    backup: FakeOpenAI = await start_fake(FakeOpenAI)
    slow.enqueue(Reply(role_chunk=False, ending="stall"))  # headers, then not one body byte
    backup.enqueue(Reply(pieces=["rescued"]))
    server = await chain_server(
        make_settings,
        start_server,
        {
            "slow": config_for(slow, first_token_timeout=0.4, idle_timeout=30),
            "backup": config_for(backup, model="backup-model"),
        },
        ["slow", "backup"],
    )
    client = await connect(server)
    loop = asyncio.get_running_loop()
    began = loop.time()
    event, done, tokens = await run_stream(client)
    elapsed = loop.time() - began
    assert event == "chat_complete"
    assert (done["provider"], done["model"], done["full_response"]) == (
        "backup",
        "backup-model",
        "rescued",
    )
    assert tokens == "rescued"
    assert not client.of("chat_stream_error")
    assert 0.35 <= elapsed < 5.0
    # The stalled upstream connection was closed when chatsock gave up on it.
    await slow.requests[0].wait_closed(within=2)
    assert slow.requests[0].finished_at is None


@pytest.mark.parametrize("kind", [FakeOpenAI, FakeAnthropic], ids=["openai", "anthropic"])
@pytest.mark.parametrize("ending", ["error_event", "reset"])
async def test_error_event_or_reset_before_any_text_fails_over_to_the_next_provider(
    kind: type[Upstream],
    ending: Ending,
    start_fake: Any,
    make_settings: Any,
    start_server: Any,
    connect: Connect,
) -> None:
    # Anthropic's overloaded_error after HTTP 200 (or an OpenAI error chunk), or a
    # reset, before any text: the user has seen nothing, so the next provider answers.
    first = await start_fake(kind)
    second: FakeOpenAI = await start_fake(FakeOpenAI)
    first.enqueue(Reply(pieces=["never shown"], cut_after=0, ending=ending))
    second.enqueue(Reply(pieces=["from ", "second"]))
    server = await chain_server(
        make_settings,
        start_server,
        {"first": config_for(first), "second": config_for(second, model="second-model")},
        ["first", "second"],
    )
    client = await connect(server)
    event, done, tokens = await run_stream(client)
    assert event == "chat_complete"
    assert (done["provider"], done["model"]) == ("second", "second-model")
    assert done["full_response"] == tokens == "from second"
    assert not client.of("chat_stream_error")
    assert (len(first.requests), len(second.requests)) == (1, 1)


# -- failures after the first delta ----------------------------------------


async def test_mid_stream_reset_is_provider_error_with_exact_partial_and_no_failover(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    broken: FakeOpenAI = await start_fake(FakeOpenAI)
    spare: FakeAnthropic = await start_fake(FakeAnthropic)
    broken.enqueue(Reply(pieces=["Hel", "lo, ", "wor", "ld"], cut_after=3, ending="reset"))
    server = await chain_server(
        make_settings,
        start_server,
        {"broken": config_for(broken), "spare": config_for(spare)},
        ["broken", "spare"],
    )
    client = await connect(server)
    event, err, tokens = await run_stream(client, session_id="reset-session")
    assert event == "chat_stream_error"
    assert err["code"] == "provider_error"
    assert err["partial"] == tokens == "Hello, wor"
    assert err["retryable"] is True
    assert err["error"].startswith("broken: ")
    assert spare.requests == []  # no switch after text reached the client
    assert len(broken.requests) == 1  # and no retry
    # The partial is persisted with status error, as another tab sees it.
    other = await connect(server)
    joined = await other.call("session_join", {"session_id": "reset-session"})
    assert joined["active_stream"] is None
    assert [(m["role"], m["status"], m["content"]) for m in joined["messages"]] == [
        ("user", "complete", "hi"),
        ("assistant", "error", "Hello, wor"),
    ]
    assert joined["messages"][-1]["error_code"] == "provider_error"
    assert joined["messages"][-1]["provider"] == "broken"


@pytest.mark.parametrize("kind", [FakeOpenAI, FakeAnthropic], ids=["openai", "anthropic"])
async def test_error_event_after_text_is_retryable_provider_error_with_exact_partial(
    kind: type[Upstream],
    start_fake: Any,
    make_settings: Any,
    start_server: Any,
    connect: Connect,
) -> None:
    upstream = await start_fake(kind)
    spare: FakeOpenAI = await start_fake(FakeOpenAI)
    upstream.enqueue(Reply(pieces=["Par", "tial ", "answer"], cut_after=2, ending="error_event"))
    server = await chain_server(
        make_settings,
        start_server,
        {"claude": config_for(upstream), "spare": config_for(spare)},
        ["claude", "spare"],
    )
    client = await connect(server)
    event, err, tokens = await run_stream(client)
    assert event == "chat_stream_error"
    assert err["code"] == "provider_error"
    assert err["partial"] == tokens == "Partial "
    assert err["retryable"] is True
    assert "overloaded_error" in err["error"]
    assert spare.requests == []


async def test_stall_after_some_text_hits_idle_timeout_with_exact_partial(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    stalling: FakeOpenAI = await start_fake(FakeOpenAI)
    spare: FakeOpenAI = await start_fake(FakeOpenAI)
    stalling.enqueue(Reply(pieces=["first ", "words"], ending="stall"))
    server = await chain_server(
        make_settings,
        start_server,
        {
            "stalling": config_for(stalling, first_token_timeout=10, idle_timeout=0.4),
            "spare": config_for(spare),
        },
        ["stalling", "spare"],
    )
    client = await connect(server)
    loop = asyncio.get_running_loop()
    began = loop.time()
    event, err, tokens = await run_stream(client)
    elapsed = loop.time() - began
    assert event == "chat_stream_error"
    assert err["code"] == "timeout"
    assert err["partial"] == tokens == "first words"
    assert err["retryable"] is True
    assert "idle" in err["error"]
    assert 0.35 <= elapsed < 5.0  # the idle timeout, not the 10 s first-token one
    assert spare.requests == []
    await stalling.requests[0].wait_closed(within=2)


# -- activity and content that is not text --------------------------------


@pytest.mark.parametrize(
    ("kind", "prelude"),
    [
        (FakeOpenAI, reasoning(*["step "] * 12)),
        (FakeOpenAI, reasoning(*["step "] * 12, field="reasoning")),
        (FakeAnthropic, [thinking(*["step "] * 12)]),
    ],
    ids=["openai-reasoning_content", "openai-reasoning", "anthropic-thinking"],
)
async def test_reasoning_longer_than_the_first_token_timeout_does_not_fail_the_stream(
    kind: type[Upstream],
    prelude: Any,
    start_fake: Any,
    make_settings: Any,
    start_server: Any,
    connect: Connect,
) -> None:
    # About 1.3 s of reasoning, one event every 0.1 s, against a 0.5 s first-token
    # timeout: each event is activity, so the deadline keeps moving.
    thinker = await start_fake(kind)
    spare: FakeOpenAI = await start_fake(FakeOpenAI)
    thinker.enqueue(Reply(prelude=prelude, pieces=["the ", "answer"], gap=0.1))
    server = await chain_server(
        make_settings,
        start_server,
        {
            "thinker": config_for(thinker, first_token_timeout=0.5, idle_timeout=0.5),
            "spare": config_for(spare),
        },
        ["thinker", "spare"],
    )
    client = await connect(server)
    loop = asyncio.get_running_loop()
    began = loop.time()
    event, done, tokens = await run_stream(client)
    assert event == "chat_complete", done
    assert loop.time() - began > 1.0  # the reasoning did outlast the first-token timeout
    assert (done["provider"], done["full_response"]) == ("thinker", "the answer")
    assert tokens == "the answer"
    assert spare.requests == []


async def test_reasoning_then_silence_still_times_out_and_fails_over(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    thinker: FakeOpenAI = await start_fake(FakeOpenAI)
    backup: FakeOpenAI = await start_fake(FakeOpenAI)
    thinker.enqueue(Reply(prelude=reasoning("hmm"), pieces=["x"], cut_after=0, ending="stall"))
    backup.enqueue(Reply(pieces=["rescued"]))
    server = await chain_server(
        make_settings,
        start_server,
        {
            "thinker": config_for(thinker, first_token_timeout=0.4, idle_timeout=0.4),
            "backup": config_for(backup),
        },
        ["thinker", "backup"],
    )
    client = await connect(server)
    event, done, tokens = await run_stream(client)
    assert (event, done["provider"], tokens) == ("chat_complete", "backup", "rescued")
    await thinker.requests[0].wait_closed(within=2)


async def test_non_string_content_is_dropped_and_the_stream_completes_with_its_text(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    odd: FakeOpenAI = await start_fake(FakeOpenAI)
    odd.enqueue(
        Reply(
            prelude=[
                {"content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
                {"content": 42},
                {"content": {"text": "nope"}},
                {"content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ""}}]},
                {"refusal": "no"},
            ],
            pieces=[", ", "world"],
        )
    )
    server = await chain_server(make_settings, start_server, {"odd": config_for(odd)}, ["odd"])
    client = await connect(server)
    event, done, tokens = await run_stream(client, session_id="odd-content")
    assert event == "chat_complete", done
    assert done["full_response"] == tokens == "Hello, world"
    other = await connect(server)
    joined = await other.call("session_join", {"session_id": "odd-content"})
    assert joined["active_stream"] is None  # the session's slot is free again
    assert joined["messages"][-1]["content"] == "Hello, world"


# -- stop ------------------------------------------------------------------


@pytest.mark.parametrize("kind", [FakeOpenAI, FakeAnthropic], ids=["openai", "anthropic"])
async def test_chat_stop_closes_the_upstream_connection_within_200ms(
    kind: type[Upstream],
    start_fake: Any,
    make_settings: Any,
    start_server: Any,
    connect: Connect,
) -> None:
    upstream = await start_fake(kind)
    upstream.enqueue(Reply(pieces=["still ", "going"], ending="stall"))
    server = await chain_server(make_settings, start_server, {"up": config_for(upstream)}, ["up"])
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi"})
    sid = ack["stream_id"]
    await client.wait_for(
        lambda _: "".join(t["token"] for t in client.tokens(sid)) == "still going"
    )
    request = upstream.requests[0]
    assert request.closed_at is None
    stop_at = asyncio.get_running_loop().time()
    assert await client.call("chat_stop", {"stream_id": sid}) == {"ok": True, "stopped": True}
    closed_at = await request.wait_closed(within=2)
    assert closed_at - stop_at < 0.2
    event, done = await client.wait_terminal(sid)
    assert event == "chat_complete"
    assert done["stopped"] is True
    assert done["finish_reason"] == "stopped"
    assert done["full_response"] == "still going"


# -- usage and finish reasons ----------------------------------------------


@pytest.mark.parametrize(
    ("kind", "upstream_reason", "finish_reason"),
    [
        (FakeOpenAI, "length", "length"),
        (FakeOpenAI, "stop", "stop"),
        (FakeOpenAI, "content_filter", "content_filter"),
        (FakeAnthropic, "end_turn", "stop"),
        (FakeAnthropic, "max_tokens", "length"),
        (FakeAnthropic, "refusal", "content_filter"),
    ],
)
async def test_usage_and_mapped_finish_reason_reach_chat_complete(
    kind: type[Upstream],
    upstream_reason: str,
    finish_reason: str,
    start_fake: Any,
    make_settings: Any,
    start_server: Any,
    connect: Connect,
) -> None:
    upstream = await start_fake(kind)
    upstream.enqueue(Reply(pieces=["a", "b"], finish_reason=upstream_reason, usage=(21, 9)))
    server = await chain_server(make_settings, start_server, {"up": config_for(upstream)}, ["up"])
    client = await connect(server)
    event, done, tokens = await run_stream(client)
    assert event == "chat_complete"
    assert done["full_response"] == tokens == "ab"
    assert done["usage"] == {"input_tokens": 21, "output_tokens": 9}
    assert done["finish_reason"] == finish_reason
    assert done["stopped"] is False
    if kind is FakeOpenAI:  # usage is asked for in the stream
        assert upstream.requests[0].body["stream_options"] == {"include_usage": True}


# -- choosing a provider by name -------------------------------------------


async def test_request_provider_picks_a_named_openai_compatible_provider_beside_the_default(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    default: FakeOpenAI = await start_fake(FakeOpenAI)
    local: FakeOpenAI = await start_fake(FakeOpenAI)
    local.enqueue(Reply(pieces=["from ", "local"]), Reply(pieces=["custom"]))
    default.enqueue(Reply(pieces=["from ", "default"]))
    server = await chain_server(
        make_settings,
        start_server,
        {
            "openai": config_for(default, model="gpt-default"),
            "local": config_for(
                local,
                model="llama-local",
                api_key=None,
                headers={"X-Tenant": "acme"},
                models=["qwen-custom"],  # a client may pick it besides the default
            ),
        },
        ["openai"],
    )
    client = await connect(server)

    event, done, tokens = await run_stream(client, provider="local")
    assert event == "chat_complete"
    assert (done["provider"], done["model"], done["full_response"]) == (
        "local",
        "llama-local",
        "from local",
    )
    assert tokens == "from local"
    assert default.requests == []
    sent = local.requests[0]
    assert sent.body["model"] == "llama-local"
    assert sent.headers["X-Tenant"] == "acme"
    assert KEY not in sent.headers.get("Authorization", "")  # the default's key stays home

    # The request's model overrides the named provider's default model.
    event, done, _ = await run_stream(client, provider="local", model="qwen-custom")
    assert (event, done["provider"], done["model"]) == ("chat_complete", "local", "qwen-custom")
    assert local.requests[1].body["model"] == "qwen-custom"

    # Without `provider` the default chain answers.
    event, done, _ = await run_stream(client)
    assert (event, done["provider"], done["model"]) == ("chat_complete", "openai", "gpt-default")
    assert default.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert "X-Tenant" not in default.requests[0].headers
    assert len(local.requests) == 2


async def test_unknown_provider_is_an_invalid_request_ack(
    start_fake: Any, make_settings: Any, start_server: Any, connect: Connect
) -> None:
    upstream: FakeOpenAI = await start_fake(FakeOpenAI)
    server = await chain_server(
        make_settings, start_server, {"openai": config_for(upstream)}, ["openai"]
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi", "provider": "nope"})
    assert ack["ok"] is False
    assert ack["error"]["code"] == "invalid_request"
    assert "nope" in ack["error"]["message"]
    assert upstream.requests == []
    assert not client.of("chat_stream_error")


# -- text integrity --------------------------------------------------------

UNICODE_PIECES = ["héllo ", "世界", "、こんにちは ", "🎉", "👍🏽 ", "naïve ", "😀"]


@pytest.mark.parametrize("kind", [FakeOpenAI, FakeAnthropic], ids=["openai", "anthropic"])
async def test_chunks_splitting_multibyte_characters_arrive_intact_end_to_end(
    kind: type[Upstream],
    start_fake: Any,
    make_settings: Any,
    start_server: Any,
    connect: Connect,
) -> None:
    upstream = await start_fake(kind)
    script = Reply(pieces=UNICODE_PIECES)
    body = upstream.render(script, MODEL)
    # Cut inside a 2-byte (é), 3-byte (世) and 4-byte (🎉) character, and an emoji modifier.
    script.split_at = split_inside_multibyte(body, "é", "世", "🎉", "🏽")
    upstream.enqueue(script)
    server = await chain_server(make_settings, start_server, {"up": config_for(upstream)}, ["up"])
    client = await connect(server)
    event, done, tokens = await run_stream(client)
    assert event == "chat_complete"
    assert done["full_response"] == tokens == "".join(UNICODE_PIECES)
    assert "\ufffd" not in tokens


@pytest.mark.parametrize("kind", [FakeOpenAI, FakeAnthropic], ids=["openai", "anthropic"])
async def test_emoji_and_cjk_reply_in_small_chunks_arrives_intact(
    kind: type[Upstream],
    start_fake: Any,
    make_settings: Any,
    start_server: Any,
    connect: Connect,
) -> None:
    upstream = await start_fake(kind)
    pieces = ["你好", "世界", "🌏🚀", " 日本語と", "한국어 ", "👨‍👩‍👧"]
    upstream.enqueue(Reply(pieces=pieces, chunk_size=5, gap=0.001))
    server = await chain_server(make_settings, start_server, {"up": config_for(upstream)}, ["up"])
    client = await connect(server)
    event, done, tokens = await run_stream(client)
    assert event == "chat_complete"
    assert done["full_response"] == tokens == "".join(pieces)
