"""The anthropic provider through the official SDK against a loopback fake of the real API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chatsock.providers.anthropic import AnthropicProvider
from chatsock.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderConnectionError,
    ProviderHTTPError,
    ProviderStreamError,
    Usage,
)
from tests.fakes.upstream import Block, FakeAnthropic, Reply, thinking, unused_port
from tests.support.provider_harness import (
    HELLO,
    ProviderMaker,
    collect,
    drain_into,
    ignored_notes,
    is_activity,
    text_of,
)

MODEL = "claude-fake"
SECRET = "sk-ant-test-0123456789abcdef"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def make_provider(upstream: FakeAnthropic) -> AsyncIterator[ProviderMaker[AnthropicProvider]]:
    defaults = {
        "base_url": upstream.base_url,
        "api_key": SECRET,
        "default_model": MODEL,
        "max_retries": 0,
    }
    maker = ProviderMaker(AnthropicProvider, "claude", defaults)
    yield maker
    await maker.aclose()


@pytest.fixture
def provider(make_provider: ProviderMaker[AnthropicProvider]) -> AnthropicProvider:
    return make_provider()


# -- streaming -------------------------------------------------------------


async def test_streams_text_then_one_final_delta_with_stop_and_usage(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    reply = Reply(pieces=["Hello", ",", " world"], usage=(25, 4))
    assert b"event: ping\n" in upstream.render(reply, MODEL)
    upstream.enqueue(reply)
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["Hello", ",", " world", ""]
    assert deltas[-1].finish_reason == "stop"
    # input_tokens come from message_start, output_tokens from message_delta.
    assert deltas[-1].usage == Usage(input_tokens=25, output_tokens=4)
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])


async def test_emoji_and_cjk_arrive_intact(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    pieces = ["こんにちは", "、世界", " 🎉👩‍👩‍👧", " 한국어"]
    upstream.enqueue(Reply(pieces=pieces))
    assert text_of(await collect(provider)) == "".join(pieces)


@pytest.mark.parametrize(
    "split_after",
    [
        pytest.param(lambda body: body.index(b"\n\n") + 1, id="between-the-two-newlines"),
        pytest.param(lambda body: body.index(b"event: content_block_delta") + 8, id="mid-event"),
        pytest.param(lambda body: body.index(b'"text":"Hi') + 4, id="mid-line"),
        pytest.param(lambda body: body.index("🎉".encode()) + 3, id="mid-emoji"),
        pytest.param(lambda body: body.index("界".encode()) + 2, id="mid-cjk"),
    ],
)
async def test_chunk_boundaries_anywhere_give_the_same_text(
    upstream: FakeAnthropic,
    provider: AnthropicProvider,
    split_after: Callable[[bytes], int],
) -> None:
    reply = Reply(pieces=["Hi", " 世界", " 🎉"])
    reply.split_at = [split_after(upstream.render(reply, MODEL))]
    upstream.enqueue(reply)
    deltas = await collect(provider)
    assert text_of(deltas) == "Hi 世界 🎉"
    assert deltas[-1].finish_reason == "stop"


async def test_tiny_chunks_of_five_bytes_give_the_same_text(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(pieces=["日本語", "🎉", "x"], chunk_size=5, gap=0.001))
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["日本語", "🎉", "x", ""]


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
    ],
)
async def test_stop_reasons_map_into_the_chatsock_vocabulary(
    upstream: FakeAnthropic, provider: AnthropicProvider, stop_reason: str, expected: str
) -> None:
    upstream.enqueue(Reply(pieces=["x"], finish_reason=stop_reason))
    deltas = await collect(provider)
    assert deltas[-1].finish_reason == expected


# -- activity and parts that are not text ----------------------------------


async def test_thinking_streams_as_reasoning_and_its_signed_block_comes_back_whole(
    upstream: FakeAnthropic, provider: AnthropicProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    upstream.enqueue(Reply(prelude=[thinking("Let me", " think.")], pieces=["Hi"]))
    deltas = await collect(provider)
    # content_block_start (activity), two thinking_deltas, one signature_delta; the text.
    assert [(d.reasoning, d.text) for d in deltas] == [
        ("", ""),
        ("Let me", ""),
        (" think.", ""),
        ("", ""),
        ("", "Hi"),
        ("", ""),
    ]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].signed == (
        {"type": "thinking", "thinking": "Let me think.", "signature": "c2lnbmF0dXJl"},
    )
    assert ignored_notes(caplog.records) == []  # reasoning is expected, not worth a line


async def test_redacted_thinking_is_kept_for_the_next_turn_and_shows_nothing(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    redacted = Block({"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"})
    upstream.enqueue(Reply(prelude=[thinking("a"), redacted], pieces=["Hi"]))
    deltas = await collect(provider)
    assert text_of(deltas) == "Hi"
    assert "".join(d.reasoning for d in deltas) == "a"
    assert [b["type"] for b in deltas[-1].signed] == ["thinking", "redacted_thinking"]
    assert deltas[-1].signed[1]["data"] == "EmwKAhgBEgy3va3pzix/LafPsn4a"


async def test_a_thinking_budget_is_sent_and_signed_thinking_goes_back_in_the_next_turn(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    """A multi-turn conversation with extended thinking, through the SDK."""
    upstream.enqueue(Reply(prelude=[thinking("First, ", "think.")], pieces=["Four."]))
    first = ChatRequest([ChatMessage("user", "2+2?")], max_tokens=500, thinking_budget=2000)
    deltas = await collect(provider, first)
    body = upstream.requests[-1].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert body["max_tokens"] == 2500  # the budget on top of what the reply may use
    signed = deltas[-1].signed
    upstream.enqueue(Reply(pieces=["Eight."]))
    second = ChatRequest(
        [
            ChatMessage("user", "2+2?"),
            ChatMessage("assistant", text_of(deltas), signed=signed),
            ChatMessage("user", "and 4+4?"),
        ],
        thinking_budget=500,  # raised to the API's floor
    )
    assert text_of(await collect(provider, second)) == "Eight."
    body = upstream.requests[-1].body
    assert body["thinking"]["budget_tokens"] == 1024
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "First, think.", "signature": "c2lnbmF0dXJl"},
            {"type": "text", "text": "Four."},
        ],
    }
    assert body["messages"][0] == {"role": "user", "content": "2+2?"}


async def test_without_a_budget_no_thinking_is_asked(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(pieces=["ok"]))
    await collect(provider)
    assert "thinking" not in upstream.requests[-1].body


TOOL_INPUT = [
    {"type": "input_json_delta", "partial_json": '{"city": "Par'},
    {"type": "input_json_delta", "partial_json": 'is"}'},
]
CITATION = {
    "type": "citations_delta",
    "citation": {"type": "char_location", "cited_text": "<b>leak</b>", "document_index": 0},
}


@pytest.mark.parametrize(
    ("block", "activity", "logged"),
    [
        pytest.param(
            Block(
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}, TOOL_INPUT
            ),
            3,
            ["content block tool_use", "delta input_json_delta"],
            id="tool_use",
        ),
        pytest.param(
            Block({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search"}),
            1,
            ["content block server_tool_use"],
            id="server_tool_use",
        ),
        pytest.param(
            Block({"type": "text", "text": ""}, [CITATION, CITATION]),
            2,
            ["delta citations_delta"],
            id="citations_delta",
        ),
    ],
)
async def test_unsupported_blocks_and_deltas_are_activity_without_text_and_logged_once(
    upstream: FakeAnthropic,
    provider: AnthropicProvider,
    block: Block,
    activity: int,
    logged: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    upstream.enqueue(Reply(prelude=[block], pieces=["ok"], finish_reason="tool_use"))
    deltas = await collect(provider)
    assert [d.text for d in deltas] == [""] * activity + ["ok", ""]
    assert all(is_activity(d) for d in deltas[:activity])
    assert deltas[-1].finish_reason == "tool_calls"
    notes = [message for _, message in ignored_notes(caplog.records)]
    assert len(notes) == len(logged), notes
    for kind, message in zip(logged, notes, strict=True):
        assert kind in message
        assert "claude" in message
        assert "leak" not in message


async def test_unknown_block_delta_and_event_types_yield_nothing_and_are_logged_once(
    upstream: FakeAnthropic, provider: AnthropicProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    future_delta = {"type": "hologram_delta", "hologram": "<b>leak</b>"}
    future = Block({"type": "hologram", "hologram": "<b>leak</b>"}, [future_delta, future_delta])
    odd = Block({"type": ["not", "a", "name"]})
    reply = Reply(prelude=[future, odd], pieces=["ok"])
    body = upstream.render(reply, MODEL)
    extra = b'event: future_event\ndata: {"type": "future_event"}\n\n'
    upstream.enqueue(Reply(raw_body=extra + body + extra))
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["ok", ""]
    notes = [message for _, message in ignored_notes(caplog.records)]
    kinds = [
        "event 'future_event'",
        "content block type 'hologram'",
        "delta type 'hologram_delta'",
        "content block type <list>",
    ]
    assert len(notes) == len(kinds), notes
    for kind, note in zip(kinds, notes, strict=True):
        assert f"provider claude: ignored {kind}" in note
        assert "leak" not in note


@pytest.mark.parametrize("text", [42, None, {"t": "<b>leak</b>"}, ["<b>leak</b>"]])
async def test_non_string_text_delta_yields_nothing_and_the_stream_completes(
    upstream: FakeAnthropic,
    provider: AnthropicProvider,
    text: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    odd = {"type": "text_delta", "text": text}
    upstream.enqueue(
        Reply(prelude=[Block({"type": "text", "text": ""}, [odd, odd])], pieces=["ok"])
    )
    deltas = await collect(provider)
    assert all(type(d.text) is str for d in deltas)
    assert [d.text for d in deltas] == ["ok", ""]
    notes = ignored_notes(caplog.records)
    assert len(notes) == 1, notes
    level, message = notes[0]
    assert level == logging.WARNING
    assert "claude" in message
    assert "text_delta.text" in message
    assert "leak" not in message


# -- the request -----------------------------------------------------------


async def test_request_body_puts_the_system_prompt_in_system_and_drops_temperature(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    request = ChatRequest(
        [ChatMessage("user", "hi"), ChatMessage("assistant", "hello"), ChatMessage("user", "more")],
        model="claude-picked",
        system_prompt="Be brief.",
        temperature=0.2,
        max_tokens=64,
    )
    await collect(provider, request)
    body = upstream.requests[-1].body
    assert body == {
        "model": "claude-picked",
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "more"},
        ],
        "max_tokens": 64,
        "stream": True,
    }
    # The anthropic SDK 2.x Messages API has no temperature; it is left out.


async def test_max_tokens_defaults_because_anthropic_requires_it(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    await collect(provider)
    body = upstream.requests[-1].body
    assert body["max_tokens"] == 1024
    assert body["model"] == MODEL
    assert "system" not in body


async def test_api_key_version_and_configured_headers_are_sent(
    upstream: FakeAnthropic, make_provider: ProviderMaker[AnthropicProvider]
) -> None:
    provider = make_provider(headers={"anthropic-beta": "fake-beta", "X-Team": "chat"})
    await collect(provider)
    headers = upstream.requests[-1].headers
    assert SECRET in headers.get("x-api-key", "") + headers.get("Authorization", "")
    assert headers["anthropic-version"]
    assert headers["anthropic-beta"] == "fake-beta"
    assert headers["X-Team"] == "chat"


# -- failures before the first delta ---------------------------------------


async def test_http_401_fails_over_without_leaking_the_key(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(status=401, error_message=f"invalid x-api-key {SECRET}"))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider)
    error = caught.value
    assert (error.status, error.fails_over, error.retryable) == (401, True, False)
    assert error.provider == "claude"
    assert upstream.base_url in error.detail
    assert upstream.base_url not in error.message
    assert "authentication_error" in error.message
    assert SECRET not in str(error)
    assert error.__context__ is None


async def test_http_429_with_retry_after_is_retryable(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(status=429, retry_after="12"))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider)
    error = caught.value
    assert (error.status, error.fails_over, error.retryable, error.retry_after) == (
        429,
        True,
        True,
        12.0,
    )


@pytest.mark.parametrize("status", [500, 529])
async def test_http_5xx_and_overloaded_are_retryable_and_fail_over(
    upstream: FakeAnthropic, provider: AnthropicProvider, status: int
) -> None:
    upstream.enqueue(Reply(status=status))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider)
    assert (caught.value.status, caught.value.fails_over, caught.value.retryable) == (
        status,
        True,
        True,
    )


async def test_connection_refused_is_a_connection_error_naming_the_provider() -> None:
    base_url = f"http://127.0.0.1:{unused_port()}"
    provider = AnthropicProvider("claude", base_url=base_url, max_retries=0, api_key=SECRET)
    try:
        with pytest.raises(ProviderConnectionError) as caught:
            await collect(provider)
    finally:
        await provider.aclose()
    assert caught.value.fails_over
    assert caught.value.message == "connection refused at provider 'claude'"
    assert caught.value.detail == f"connection refused at {base_url}"
    assert SECRET not in str(caught.value)


# -- failures after the first delta ----------------------------------------


async def test_error_event_after_http_200_is_a_retryable_stream_error(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(pieces=["par", "tial", "x"], cut_after=2, ending="error_event"))
    received: list[str] = []
    with pytest.raises(ProviderStreamError) as caught:
        await drain_into(received, provider)
    assert received == ["par", "tial"]
    error = caught.value
    assert (error.fails_over, error.before_text, error.retryable) == (False, False, True)
    assert "overloaded_error" in error.message
    assert "Overloaded" in error.message
    assert error.provider == "claude"


async def test_malformed_event_is_a_stream_error(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(raw_body=b'event: content_block_delta\ndata: {"no": "delta"}\n\n'))
    with pytest.raises(ProviderStreamError, match="malformed content_block_delta event"):
        await collect(provider)


async def test_invalid_request_error_event_is_not_retryable(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(
        Reply(
            pieces=["x"],
            cut_after=1,
            ending="error_event",
            error_event=("invalid_request_error", "bad"),
        )
    )
    with pytest.raises(ProviderStreamError) as caught:
        await collect(provider)
    assert not caught.value.retryable


async def test_mid_stream_reset_is_a_stream_error_after_the_partial(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(pieces=["one", "two", "three"], cut_after=1, ending="reset"))
    received: list[str] = []
    with pytest.raises(ProviderStreamError) as caught:
        await drain_into(received, provider)
    assert received == ["one"]
    assert not caught.value.fails_over
    assert upstream.base_url in caught.value.detail
    assert upstream.base_url not in caught.value.message


async def test_body_ending_before_message_stop_is_a_stream_error(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    reply = Reply(pieces=["a", "b"])
    body = upstream.render(reply, MODEL)
    upstream.enqueue(Reply(raw_body=body[: body.index(b"event: content_block_stop")]))
    received: list[str] = []
    with pytest.raises(ProviderStreamError, match="ended before message_stop"):
        await drain_into(received, provider)
    assert received == ["a", "b"]


# -- failures after HTTP 200 but before any text ---------------------------


@pytest.mark.parametrize(
    ("error_type", "retryable"),
    [("overloaded_error", True), ("api_error", True), ("invalid_request_error", False)],
)
async def test_error_event_before_any_text_fails_over(
    upstream: FakeAnthropic, provider: AnthropicProvider, error_type: str, retryable: bool
) -> None:
    upstream.enqueue(
        Reply(
            pieces=["never"],
            cut_after=0,
            ending="error_event",
            error_event=(error_type, "Overloaded"),
        )
    )
    with pytest.raises(ProviderStreamError) as caught:
        await collect(provider)
    error = caught.value
    assert (error.before_text, error.fails_over, error.retryable) == (True, True, retryable)
    assert error_type in error.message


async def test_error_event_after_only_thinking_still_fails_over(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(prelude=[thinking("hmm")], cut_after=0, ending="error_event"))
    received: list[str] = []
    with pytest.raises(ProviderStreamError) as caught:
        await drain_into(received, provider)
    assert set(received) == {""}
    assert caught.value.fails_over


async def test_reset_before_any_text_fails_over(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(pieces=["x"], cut_after=0, ending="reset"))
    with pytest.raises(ProviderStreamError) as caught:
        await collect(provider)
    assert (caught.value.before_text, caught.value.fails_over) == (True, True)


# -- cancellation ----------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_upstream_within_200ms(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(pieces=[f"t{i} " for i in range(500)], gap=0.01))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(HELLO):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    cancelled_at = asyncio.get_running_loop().time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    closed_at = await upstream.requests[-1].wait_closed()
    assert closed_at - cancelled_at < 0.2
    assert upstream.requests[-1].finished_at is None


async def test_stall_gives_no_delta_and_the_timed_out_read_closes_the_upstream(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(pieces=["a", "b"], cut_after=1, ending="stall"))
    stream = provider.stream(HELLO)
    assert (await anext(stream)).text == "a"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.3)
    timed_out_at = asyncio.get_running_loop().time()
    closed_at = await upstream.requests[-1].wait_closed()
    assert closed_at - timed_out_at < 0.2


async def test_aclose_of_the_stream_closes_the_upstream_within_200ms(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.enqueue(Reply(pieces=["a", "b"], cut_after=1, ending="stall"))
    stream = provider.stream(HELLO)
    assert (await anext(stream)).text == "a"
    closing_at = asyncio.get_running_loop().time()
    await stream.aclose()
    closed_at = await upstream.requests[-1].wait_closed()
    assert closed_at - closing_at < 0.2
